/* chat_template.c - placeholder until the subsystem lands. */
#include "chat_template.h"

/* tokenizer.c - placeholder until the subsystem lands. */
#include "tokenizer.h"

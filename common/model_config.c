/* model_config.c - placeholder until the subsystem lands. */
#include "model_config.h"

/* safetensors.c - placeholder until the subsystem lands. */
#include "safetensors.h"

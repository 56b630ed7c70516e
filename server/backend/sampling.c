/* sampling.c - placeholder */
#include "backend.h"

/* backend_cpu.c - placeholder */
#include "backend.h"

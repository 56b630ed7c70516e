/* request.c - placeholder */
#include "request.h"

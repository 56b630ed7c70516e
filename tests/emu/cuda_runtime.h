/*
 * cuda_runtime.h - stands in for the CUDA toolkit's header when a kernel
 * file is compiled for the emulator (tests/emu/ first on the include path),
 * as nvcc includes the real one into every .cu, and for the CUDA backend's
 * files compiled against the emulation. The runtime API subset in C and
 * C++ and the device side in C++ are in cuda_emu.h; the host API
 * (memory, streams, events, graphs) in cuda_emu_runtime.h.
 */
#ifndef CUDA_EMU_RUNTIME_H
#define CUDA_EMU_RUNTIME_H

/* the toolkit's brings in <math.h> (crt/math_functions.h), and C files
 * compiled against it use that */
#include <math.h>

#include "cuda_emu.h"
#include "cuda_emu_runtime.h"

#endif

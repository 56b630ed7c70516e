/*
 * cuda_runtime.h - stands in for the CUDA toolkit's header when a kernel
 * file is compiled for the emulator (tests/emu/ first on the include path),
 * as nvcc includes the real one into every .cu. Everything is in
 * cuda_emu.h: the runtime API subset in C and C++, the device side in C++.
 */
#ifndef CUDA_EMU_RUNTIME_H
#define CUDA_EMU_RUNTIME_H

#include "cuda_emu.h"

#endif

/*
 * fingerprint.h - 64-bit FNV-1a fingerprints of what is being served: the
 * model files (config, tokenizer, weight file names and sizes), the
 * version and the settings that change results. The API reports one as
 * system_fingerprint; the nodes of a multi-node group compare another
 * before they work together. Reads files; owns nothing; never fails
 * (a missing file hashes as a marker).
 */
#ifndef ES_FINGERPRINT_H
#define ES_FINGERPRINT_H

#include <stdint.h>

#include "options.h"

/* What the API reports: the model files, the chat template, the version,
 * the device, --tp, the KV block size (tokens) and prefix caching. */
uint64_t fingerprint_served(const struct options *o, int kv_block_size);

/* What every node of a multi-node group must agree on: the model files,
 * the version and the limits the backends size their buffers by. */
uint64_t fingerprint_node(const struct options *o);

#endif

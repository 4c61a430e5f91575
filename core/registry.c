/* Storage of the ownership registry (see registry.h).
 * SPDX-License-Identifier: MIT */
#include "registry.h"

uint8_t chunk_kinds[(size_t)1 << (HAK_ADDR_BITS - HAK_CHUNK_SHIFT)]
    __attribute__((visibility("hidden")));

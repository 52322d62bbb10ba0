/* Python's object arenas on transparent huge pages.
 *
 * Under load each kernel runs its cells on caches and TLBs that the other kernels and the
 * gateway have just filled: IPython's per-cell work touches a few MB of small Python
 * objects spread over pymalloc's 1 MiB arenas, and on this VM every TLB miss is a nested
 * page walk. pymalloc gets each arena from its own mmap(): 4 KiB pages, scattered. This
 * allocator carves the arenas out of 2 MiB aligned chunks the kernel marks MADV_HUGEPAGE,
 * so the heap is mapped by a few dozen huge pages instead of thousands of small ones
 * (measured in docs/BENCHMARKS.md).
 *
 * Chunks are mapped one at a time as the heap grows (never reserved ahead: address space
 * is what RLIMIT_AS counts, and user code may set it), a freed arena's memory goes back to
 * the system (MADV_DONTNEED, as munmap would) and its address is reused first. An arena of
 * another size is not ours: the caller maps it itself (karena_alloc returns NULL,
 * karena_free false), as it does when a chunk cannot be mapped. Not thread-safe: pymalloc
 * calls it with the GIL held. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

typedef struct karena karena_t;

/* Arenas of `arena_size` bytes (a multiple of the page size, at most 2 MiB) out of chunks of
 * `chunk_size` bytes (rounded up to 2 MiB). `huge` asks for transparent huge pages
 * (MADV_HUGEPAGE); when the system refuses them the allocator still works, on small pages.
 * Maps nothing yet. NULL with errno on failure (EINVAL for bad sizes, ENOMEM). */
karena_t *karena_new(size_t chunk_size, size_t arena_size, bool huge);
/* Unmaps every chunk: only when no arena is in use any more. NULL-safe. */
void karena_destroy(karena_t **self_p);

/* An arena of `size` bytes, or NULL: not arena_size, or no chunk could be mapped (the caller
 * maps one itself). */
void *karena_alloc(karena_t *self, size_t size);
/* true when p was ours (its memory is released and the address kept for reuse). */
bool karena_free(karena_t *self, void *p, size_t size);

/* Arenas handed out and not freed; chunks mapped; whether MADV_HUGEPAGE was accepted. */
size_t karena_in_use(const karena_t *self);
size_t karena_chunks(const karena_t *self);
bool karena_huge(const karena_t *self);

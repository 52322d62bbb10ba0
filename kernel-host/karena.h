/* Python's object arenas on transparent huge pages.
 *
 * Under load each kernel runs its cells on caches and TLBs that the other kernels and the
 * gateway have just filled: IPython's per-cell work touches a few MB of small Python
 * objects spread over pymalloc's 1 MiB arenas, and on this VM every TLB miss is a nested
 * page walk. pymalloc gets each arena from its own mmap(): 4 KiB pages, scattered. This
 * allocator hands the arenas out of one region the kernel marks MADV_HUGEPAGE, contiguous
 * and 2 MiB aligned, so the heap is mapped by a few dozen huge pages instead of thousands
 * of small ones (measured in docs/BENCHMARKS.md).
 *
 * Pure bookkeeping over one reservation: the region is reserved PROT_NONE (costs no
 * memory), each arena is made writable as it is first handed out, a freed arena's memory
 * goes back to the system (MADV_DONTNEED, as munmap would) and its address is reused
 * first. An arena of another size, or one past the reservation, is not ours: the caller
 * falls back to mmap (karena_alloc returns NULL, karena_free false). Not thread-safe:
 * pymalloc calls it with the GIL held. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

typedef struct karena karena_t;

/* Reserves `reserve` bytes (rounded up to 2 MiB) for arenas of `arena_size` bytes (a
 * multiple of the page size, at most 2 MiB). `huge` asks for transparent huge pages
 * (MADV_HUGEPAGE); when the system refuses them the allocator still works, on small
 * pages. NULL with errno on failure (EINVAL for bad sizes, ENOMEM). */
karena_t *karena_new(size_t reserve, size_t arena_size, bool huge);
/* Unmaps the whole reservation: only when no arena is in use any more. NULL-safe. */
void karena_destroy(karena_t **self_p);

/* An arena of `size` bytes, or NULL: not arena_size, reservation used up, or mprotect
 * failed (the caller maps one itself). */
void *karena_alloc(karena_t *self, size_t size);
/* true when p was ours (its memory is released and the address kept for reuse). */
bool karena_free(karena_t *self, void *p, size_t size);

/* Arenas handed out and not freed; whether MADV_HUGEPAGE was accepted. */
size_t karena_in_use(const karena_t *self);
bool karena_huge(const karena_t *self);

/* Arenas out of huge-page chunks (see karena.h). */
#include "karena.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#define HUGE_SIZE ((size_t)2 << 20)

struct karena {
    size_t chunk_size;
    size_t arena_size;
    uint8_t **chunks; /* 2 MiB aligned, chunk_size each */
    size_t nchunks;
    size_t carved; /* bytes of the last chunk handed out */
    void **freed;  /* freed arenas, reused first (a stack) */
    size_t n_freed;
    size_t cap_freed;
    size_t in_use;
    bool want_huge;
    bool huge;
};

karena_t *karena_new(size_t chunk_size, size_t arena_size, bool huge) {
    long page = sysconf(_SC_PAGESIZE);
    if (page <= 0 || arena_size == 0 || arena_size % (size_t)page || arena_size > HUGE_SIZE ||
        chunk_size == 0 || chunk_size > ((size_t)1 << 40)) {
        errno = EINVAL;
        return NULL;
    }
    karena_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->chunk_size = (chunk_size + HUGE_SIZE - 1) & ~(HUGE_SIZE - 1);
    self->arena_size = arena_size;
    self->want_huge = huge;
    return self;
}

void karena_destroy(karena_t **self_p) {
    if (!self_p || !*self_p)
        return;
    karena_t *self = *self_p;
    for (size_t i = 0; i < self->nchunks; i++)
        (void)munmap(self->chunks[i], self->chunk_size);
    free(self->chunks);
    free(self->freed);
    free(self);
    *self_p = NULL;
}

/* Maps the next chunk. The bookkeeping grows first, so a free never needs memory. */
static int add_chunk(karena_t *self) {
    size_t slots = self->cap_freed + self->chunk_size / self->arena_size;
    void **freed = realloc(self->freed, slots * sizeof *freed);
    if (!freed)
        return -ENOMEM;
    self->freed = freed;
    self->cap_freed = slots;
    uint8_t **chunks = realloc(self->chunks, (self->nchunks + 1) * sizeof *chunks);
    if (!chunks)
        return -ENOMEM;
    self->chunks = chunks;
    /* Mapped 2 MiB larger and trimmed at both ends: the kernel aligns nothing for us. A page
     * fault maps a huge page only where the aligned 2 MiB around it is all one mapping. */
    size_t len = self->chunk_size + HUGE_SIZE;
    uint8_t *raw = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED)
        return -errno;
    uint8_t *base = raw + (HUGE_SIZE - (uintptr_t)raw % HUGE_SIZE) % HUGE_SIZE;
    if (base > raw)
        (void)munmap(raw, (size_t)(base - raw));
    size_t tail = (size_t)(raw + len - (base + self->chunk_size));
    if (tail)
        (void)munmap(base + self->chunk_size, tail);
    bool huge = self->want_huge && madvise(base, self->chunk_size, MADV_HUGEPAGE) == 0;
    self->huge = self->nchunks == 0 ? huge : self->huge && huge;
    self->chunks[self->nchunks++] = base;
    self->carved = 0;
    return 0;
}

void *karena_alloc(karena_t *self, size_t size) {
    if (!self || size != self->arena_size)
        return NULL;
    if (self->n_freed) {
        self->in_use++;
        return self->freed[--self->n_freed];
    }
    if ((self->nchunks == 0 || self->chunk_size - self->carved < size) && add_chunk(self) < 0)
        return NULL;
    uint8_t *p = self->chunks[self->nchunks - 1] + self->carved;
    self->carved += size;
    self->in_use++;
    return p;
}

bool karena_free(karena_t *self, void *p, size_t size) {
    if (!self || !p)
        return false;
    const uint8_t *q = p;
    size_t i = 0;
    while (i < self->nchunks && (q < self->chunks[i] || q >= self->chunks[i] + self->chunk_size))
        i++;
    if (i == self->nchunks)
        return false;
    if (size != self->arena_size || (size_t)(q - self->chunks[i]) % self->arena_size)
        return true; /* inside a chunk but not an arena we gave: kept, never unmapped */
    /* Released like munmap would release it (a huge page under it is split); the address
     * stays mapped for the next arena. */
    (void)madvise(p, size, MADV_DONTNEED);
    self->freed[self->n_freed++] = p;
    self->in_use--;
    return true;
}

size_t karena_in_use(const karena_t *self) {
    return self ? self->in_use : 0;
}

size_t karena_chunks(const karena_t *self) {
    return self ? self->nchunks : 0;
}

bool karena_huge(const karena_t *self) {
    return self && self->huge;
}

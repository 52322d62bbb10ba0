/* Arenas out of one huge-page region (see karena.h). */
#include "karena.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#define HUGE_SIZE ((size_t)2 << 20)

struct karena {
    uint8_t *base;  /* 2 MiB aligned */
    size_t reserve; /* bytes reserved at base */
    size_t arena_size;
    size_t next;     /* offset of the first arena never handed out */
    size_t writable; /* offset up to which the region is writable (2 MiB steps) */
    uint32_t *freed; /* indices of freed arenas, reused first (a stack) */
    size_t n_freed;
    size_t in_use;
    bool huge;
};

karena_t *karena_new(size_t reserve, size_t arena_size, bool huge) {
    long page = sysconf(_SC_PAGESIZE);
    if (page <= 0 || arena_size == 0 || arena_size % (size_t)page || arena_size > HUGE_SIZE ||
        reserve == 0 || reserve > ((size_t)1 << 46)) {
        errno = EINVAL;
        return NULL;
    }
    reserve = (reserve + HUGE_SIZE - 1) & ~(HUGE_SIZE - 1);
    size_t slots = reserve / arena_size;
    if (slots > UINT32_MAX) {
        errno = EINVAL;
        return NULL;
    }
    karena_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    /* One index per arena the region can hold: untouched pages of a large calloc cost
     * nothing, and a free can never fail for want of room. */
    self->freed = calloc(slots, sizeof *self->freed);
    /* Over-reserve by 2 MiB and trim both ends: the kernel aligns nothing for us. */
    size_t len = reserve + HUGE_SIZE;
    uint8_t *raw =
        self->freed ? mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
                    : MAP_FAILED;
    if (raw == MAP_FAILED) {
        int e = self->freed ? errno : ENOMEM;
        free(self->freed);
        free(self);
        errno = e;
        return NULL;
    }
    uint8_t *base = raw + (HUGE_SIZE - (uintptr_t)raw % HUGE_SIZE) % HUGE_SIZE;
    if (base > raw)
        (void)munmap(raw, (size_t)(base - raw));
    size_t tail = (size_t)(raw + len - (base + reserve));
    if (tail)
        (void)munmap(base + reserve, tail);
    self->base = base;
    self->reserve = reserve;
    self->arena_size = arena_size;
    /* The flag is kept by every part mprotect later splits off, so it is set once. */
    self->huge = huge && madvise(base, reserve, MADV_HUGEPAGE) == 0;
    return self;
}

void karena_destroy(karena_t **self_p) {
    if (!self_p || !*self_p)
        return;
    karena_t *self = *self_p;
    (void)munmap(self->base, self->reserve);
    free(self->freed);
    free(self);
    *self_p = NULL;
}

void *karena_alloc(karena_t *self, size_t size) {
    if (!self || size != self->arena_size)
        return NULL;
    if (self->n_freed) {
        self->in_use++;
        return self->base + (size_t)self->freed[--self->n_freed] * self->arena_size;
    }
    if (self->reserve - self->next < size)
        return NULL;
    /* Writable a whole huge page at a time: a page fault maps a huge page only where the
     * aligned 2 MiB around it is one writable mapping; made writable arena by arena, the
     * first arena's faults would map small pages the second's could no longer replace.
     * Adjacent writable parts merge: the region stays two mappings. */
    while (self->writable < self->next + size) {
        if (mprotect(self->base + self->writable, HUGE_SIZE, PROT_READ | PROT_WRITE) < 0)
            return NULL;
        self->writable += HUGE_SIZE;
    }
    uint8_t *p = self->base + self->next;
    self->next += size;
    self->in_use++;
    return p;
}

bool karena_free(karena_t *self, void *p, size_t size) {
    if (!self || !p || (uint8_t *)p < self->base || (uint8_t *)p >= self->base + self->next)
        return false;
    size_t off = (size_t)((uint8_t *)p - self->base);
    if (size != self->arena_size || off % self->arena_size)
        return true; /* inside our region but not an arena we gave: kept, never unmapped */
    /* Released like munmap would release it (a huge page under it is split); the address
     * stays writable for the next arena. */
    (void)madvise(p, size, MADV_DONTNEED);
    self->freed[self->n_freed++] = (uint32_t)(off / self->arena_size);
    self->in_use--;
    return true;
}

size_t karena_in_use(const karena_t *self) {
    return self ? self->in_use : 0;
}

bool karena_huge(const karena_t *self) {
    return self && self->huge;
}

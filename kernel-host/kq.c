/* Bounded cross-thread FIFO with an eventfd (see kq.h). A ring of slots under one mutex:
 * the queues carry a handful of items per request, so contention is nil and a lock-free
 * design would buy nothing measurable. */
#include "kq.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    void *item;
    size_t bytes;
} slot_t;

struct kq {
    pthread_mutex_t mu;
    pthread_cond_t room;
    size_t cap, base_cap, max_bytes; /* cap grows with forced pushes; base_cap is the bound */
    size_t head, len, bytes;
    slot_t *ring;
    int efd;
};

kq_t *kq_new(size_t cap, size_t max_bytes) {
    if (cap == 0) {
        errno = EINVAL;
        return NULL;
    }
    kq_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->ring = calloc(cap, sizeof *self->ring);
    self->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (!self->ring || self->efd < 0) {
        int saved = errno ? errno : ENOMEM;
        if (self->efd >= 0)
            close(self->efd);
        free(self->ring);
        free(self);
        errno = saved;
        return NULL;
    }
    self->cap = self->base_cap = cap;
    self->max_bytes = max_bytes ? max_bytes : SIZE_MAX;
    pthread_mutex_init(&self->mu, NULL);
    pthread_cond_init(&self->room, NULL);
    return self;
}

void kq_destroy(kq_t **self_p, void (*free_fn)(void *)) {
    kq_t *self = self_p ? *self_p : NULL;
    if (!self)
        return;
    void *it;
    while ((it = kq_pop(self)))
        if (free_fn)
            free_fn(it);
    close(self->efd);
    pthread_mutex_destroy(&self->mu);
    pthread_cond_destroy(&self->room);
    free(self->ring);
    free(self);
    *self_p = NULL;
}

static bool full(const kq_t *self, size_t bytes) {
    if (self->len == 0)
        return false;
    return self->len >= self->base_cap || self->bytes + bytes > self->max_bytes;
}

static void signal_fd(kq_t *self) {
    uint64_t one = 1;
    (void)!write(self->efd, &one, sizeof one);
}

int kq_push(kq_t *self, void *item, size_t bytes, bool block) {
    pthread_mutex_lock(&self->mu);
    while (full(self, bytes)) {
        if (!block) {
            pthread_mutex_unlock(&self->mu);
            return -EAGAIN;
        }
        pthread_cond_wait(&self->room, &self->mu);
    }
    bool was_empty = self->len == 0;
    self->ring[(self->head + self->len) % self->cap] = (slot_t){item, bytes};
    self->len++;
    self->bytes += bytes;
    pthread_mutex_unlock(&self->mu);
    if (was_empty)
        signal_fd(self);
    return 0;
}

static void grow(kq_t *self) {
    /* Forced pushes beyond cap: double the ring (rare; bounded by the callers). */
    size_t ncap = self->cap * 2;
    slot_t *n = calloc(ncap, sizeof *n);
    if (!n)
        abort(); /* a kernel out of memory cannot serve anyway */
    for (size_t i = 0; i < self->len; i++)
        n[i] = self->ring[(self->head + i) % self->cap];
    free(self->ring);
    self->ring = n;
    self->head = 0;
    self->cap = ncap;
}

void kq_push_force(kq_t *self, void *item, size_t bytes) {
    pthread_mutex_lock(&self->mu);
    if (self->len == self->cap)
        grow(self);
    bool was_empty = self->len == 0;
    self->ring[(self->head + self->len) % self->cap] = (slot_t){item, bytes};
    self->len++;
    self->bytes += bytes;
    pthread_mutex_unlock(&self->mu);
    if (was_empty)
        signal_fd(self);
}

void kq_wait_room(kq_t *self, size_t bytes) {
    pthread_mutex_lock(&self->mu);
    while (full(self, bytes))
        pthread_cond_wait(&self->room, &self->mu);
    pthread_mutex_unlock(&self->mu);
}

bool kq_wait_room_ms(kq_t *self, size_t bytes, int timeout_ms) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    long ns = until.tv_nsec + (long)timeout_ms % 1000 * 1000000L;
    until.tv_sec += timeout_ms / 1000 + ns / 1000000000L;
    until.tv_nsec = ns % 1000000000L;
    pthread_mutex_lock(&self->mu);
    while (full(self, bytes))
        if (pthread_cond_timedwait(&self->room, &self->mu, &until) == ETIMEDOUT)
            break;
    bool room = !full(self, bytes);
    pthread_mutex_unlock(&self->mu);
    return room;
}

bool kq_full(kq_t *self, size_t bytes) {
    pthread_mutex_lock(&self->mu);
    bool f = full(self, bytes);
    pthread_mutex_unlock(&self->mu);
    return f;
}

void *kq_pop(kq_t *self) {
    pthread_mutex_lock(&self->mu);
    void *it = NULL;
    if (self->len) {
        slot_t s = self->ring[self->head];
        self->head = (self->head + 1) % self->cap;
        self->len--;
        self->bytes -= s.bytes;
        it = s.item;
        pthread_cond_signal(&self->room);
    }
    pthread_mutex_unlock(&self->mu);
    return it;
}

void kq_unpop(kq_t *self, void *item, size_t bytes) {
    pthread_mutex_lock(&self->mu);
    if (self->len == self->cap)
        grow(self);
    {
        self->head = (self->head + self->cap - 1) % self->cap;
        self->ring[self->head] = (slot_t){item, bytes};
        self->len++;
        self->bytes += bytes;
    }
    pthread_mutex_unlock(&self->mu);
    signal_fd(self);
}

size_t kq_len(kq_t *self) {
    pthread_mutex_lock(&self->mu);
    size_t n = self->len;
    pthread_mutex_unlock(&self->mu);
    return n;
}

int kq_fd(const kq_t *self) {
    return self->efd;
}

void kq_ack(kq_t *self) {
    uint64_t v;
    (void)!read(self->efd, &v, sizeof v);
}

void kq_kick(kq_t *self) {
    signal_fd(self);
}

/* A bounded FIFO of pointers handed from one thread to another, with an eventfd that is
 * readable while items may be waiting, so the consumer can sleep in poll()/epoll (the I/O
 * thread's loop, or the Python thread with the GIL released and SIGINT able to interrupt
 * the wait). It is the only thing the native kernel's threads share besides immutable data.
 *
 * Bounds: at most `cap` items and `max_bytes` bytes (as declared by the producer). A
 * blocking push waits for room; a non-blocking one returns -EAGAIN, so the Python thread can
 * release the GIL before it blocks.
 *
 * The eventfd is written only on an empty -> non-empty transition. The consumer must call
 * kq_ack() *before* draining with kq_pop() (then nothing pushed after the ack is missed). */
#pragma once

#include <stdbool.h>
#include <stddef.h>

typedef struct kq kq_t;

/* NULL on failure (errno). */
kq_t *kq_new(size_t cap, size_t max_bytes);
/* Frees the queue; items still queued are passed to free_fn (if not NULL). NULL-safe. */
void kq_destroy(kq_t **self_p, void (*free_fn)(void *));

/* 0, or -EAGAIN (full and !block). An item larger than max_bytes is accepted into an empty
 * queue, so nothing can wait forever. */
int kq_push(kq_t *self, void *item, size_t bytes, bool block);
/* Always queues, over the bounds if need be (for small items that must follow another in
 * order while a lock is held; the caller bounds them itself). */
void kq_push_force(kq_t *self, void *item, size_t bytes);
/* Waits until a push of `bytes` would not block (a hint: another producer may take it). */
void kq_wait_room(kq_t *self, size_t bytes);
/* The same for at most timeout_ms; true if there is room. */
bool kq_wait_room_ms(kq_t *self, size_t bytes, int timeout_ms);
/* true when a push of `bytes` would block. */
bool kq_full(kq_t *self, size_t bytes);
/* The oldest item or NULL; wakes a producer waiting for room. */
void *kq_pop(kq_t *self);
/* Puts an item back at the front (it was popped and cannot be handled yet). */
void kq_unpop(kq_t *self, void *item, size_t bytes);
size_t kq_len(kq_t *self);

/* The eventfd to wait on (readable when items may be waiting), and its reset. */
int kq_fd(const kq_t *self);
void kq_ack(kq_t *self);
/* Wake the consumer even with nothing queued (it re-checks its own state). */
void kq_kick(kq_t *self);

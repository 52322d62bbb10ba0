/* Loop devices for the disk manager: bind a backing file to a free loop device (autoclear,
 * so the device unbinds itself when its last user - normally the mounted filesystem - goes),
 * enumerate bound devices by backing file through sysfs, and release a device. Internal to
 * diskmgr/. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "diskmgr.h"

/* Binds backing_fd to a free loop device with LO_FLAGS_AUTOCLEAR and a 4 KiB logical block
 * size (LOOP_CONFIGURE; LOOP_SET_FD + LOOP_SET_STATUS64 on kernels before 5.8). direct_io is
 * a wish the call drops where the kernel refuses it. Retries when another process takes the
 * same free device first. On success *ret_fd is an O_CLOEXEC fd of the device - the device
 * stays bound only while it, or a mount, holds it - and *ret_nr its number. */
int disk_loop_attach(int backing_fd, bool direct_io, const char *file_name, int *ret_fd,
                     int *ret_nr);

/* Called for every bound loop device with its sysfs backing_file (newline stripped). A
 * negative return stops the walk and is returned by disk_loop_foreach. */
typedef int (*disk_loop_fn)(int nr, const char *backing, void *arg);
int disk_loop_foreach(disk_loop_fn fn, void *arg);

/* Unbinds loop device nr (LOOP_CLR_FD): at once if nobody holds it, else when the last
 * holder lets go. 0 also when the device is no longer bound. */
int disk_loop_release(int nr);

/* 1 if loop device nr is still bound, 0 if not, -errno if sysfs cannot tell. */
int disk_loop_bound(int nr);

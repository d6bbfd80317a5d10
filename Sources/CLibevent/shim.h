#ifndef RESPOOL_CLIBEVENT_SHIM_H
#define RESPOOL_CLIBEVENT_SHIM_H

/* System headers first: libevent's event-config.h defines _GNU_SOURCE, which would otherwise give these headers a
   second, different definition (fd_set) beside the one in Swift's Glibc module. */
#include <sys/types.h>
#include <sys/time.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <stdint.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <time.h>
#include <netdb.h>
#include <errno.h>
#include <malloc.h>

#include <event2/event.h>
#include <event2/buffer.h>
#include <event2/listener.h>
#include <event2/util.h>
#include <event2/http.h>

/* Macros and helpers that do not import into Swift. */
static inline int respool_errno(void) { return errno; }
static inline int respool_is_again(int e) { return e == EAGAIN || e == EWOULDBLOCK || e == EINTR; }
static inline short respool_ev_read(void) { return EV_READ; }
static inline short respool_ev_write(void) { return EV_WRITE; }
static inline short respool_ev_persist(void) { return EV_PERSIST; }
static inline short respool_ev_signal(void) { return EV_SIGNAL; }
static inline short respool_ev_timeout(void) { return EV_TIMEOUT; }
static inline int respool_set_nonblocking(int fd) { return evutil_make_socket_nonblocking(fd); }
static inline int respool_mallopt_thresholds(int trim, int mmap) {
    return mallopt(M_TRIM_THRESHOLD, trim) && mallopt(M_MMAP_THRESHOLD, mmap);
}

#endif

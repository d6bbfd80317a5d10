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
#include <unistd.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

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

/* `respool exec`: starts the app as a child. Between fork and exec only async-signal-safe calls: every signal back to
   its default disposition and unblocked (respool ignores SIGPIPE, which exec would otherwise keep), every descriptor
   above stderr marked close-on-exec (respool's sockets must not leak into the app), SIGTERM to the child if respool
   dies (so no app outlives a crashed respool). Returns the pid, or -1 with *err set (also when exec itself failed: the
   child reports its errno through a close-on-exec pipe). */
extern char **environ;
static inline pid_t respool_spawn(const char *file, char *const argv[], char *const envp[], int *err) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) { *err = errno; return -1; }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) { *err = errno; close(fds[0]); close(fds[1]); return -1; }
    if (pid == 0) {
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        for (int s = 1; s < NSIG; s++) if (s != SIGKILL && s != SIGSTOP) signal(s, SIG_DFL);
        if (syscall(SYS_close_range, 3U, ~0U, 4U /* CLOSE_RANGE_CLOEXEC */) != 0) {
            for (int fd = 3; fd < 65536; fd++) if (fd != fds[1]) fcntl(fd, F_SETFD, FD_CLOEXEC);
        }
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent) _exit(127);
        environ = (char **)envp;
        execvp(file, argv);
        int e = errno;
        ssize_t unused = write(fds[1], &e, sizeof e);
        (void)unused;
        _exit(127);
    }
    close(fds[1]);
    int e = 0;
    ssize_t n;
    do { n = read(fds[0], &e, sizeof e); } while (n < 0 && errno == EINTR);
    close(fds[0]);
    if (n == (ssize_t)sizeof e) {
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {}
        *err = e;
        return -1;
    }
    return pid;
}

/* waitpid(pid, WNOHANG): 0 while it runs; else the exit code as a shell reports it (128 + signal when killed). */
static inline int respool_reap(pid_t pid, int *code) {
    int status = 0;
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r <= 0) return r;
    *code = WIFEXITED(status) ? WEXITSTATUS(status) : WIFSIGNALED(status) ? 128 + WTERMSIG(status) : 1;
    return 1;
}

#endif

/* LD_PRELOAD shim for bench/slow_fsync.sh: every fsync, fdatasync and
 * sync_file_range (sled flushes with it) of the process waits
 * SLOW_FSYNC_MS milliseconds before it runs, as on a slow or contended
 * disk. Nothing else changes. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdlib.h>
#include <time.h>

static void slow_disk(void) {
    const char *ms_text = getenv("SLOW_FSYNC_MS");
    long ms = ms_text ? atol(ms_text) : 0;
    if (ms > 0) {
        struct timespec wait = {ms / 1000, (ms % 1000) * 1000000L};
        nanosleep(&wait, NULL);
    }
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    slow_disk();
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    slow_disk();
    return real(fd);
}

int sync_file_range(int fd, off_t offset, off_t nbytes, unsigned int flags) {
    static int (*real)(int, off_t, off_t, unsigned int);
    if (!real) real = (int (*)(int, off_t, off_t, unsigned int))dlsym(RTLD_NEXT, "sync_file_range");
    slow_disk();
    return real(fd, offset, nbytes, flags);
}

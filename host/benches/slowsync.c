#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
/* Adds KEEL_SLOW_SYNC_US (default 2000) microseconds to every fsync/fdatasync: a disk whose
   flush takes that long (a network-attached cloud disk), for the host benchmark. */
static void pause_it(void) {
    const char *e = getenv("KEEL_SLOW_SYNC_US");
    long us = e ? atol(e) : 2000;
    struct timespec ts = { us / 1000000, (us % 1000000) * 1000 };
    nanosleep(&ts, NULL);
}
int fsync(int fd) { static int (*real)(int); if (!real) real = dlsym(RTLD_NEXT, "fsync"); pause_it(); return real(fd); }
int fdatasync(int fd) { static int (*real)(int); if (!real) real = dlsym(RTLD_NEXT, "fdatasync"); pause_it(); return real(fd); }

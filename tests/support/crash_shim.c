/* A power cut, simulated: LD_PRELOAD this into a process and every fsync/fdatasync of a file or folder under
 * $FLUXRUN_CRASH_ROOT first copies what the call makes durable into $FLUXRUN_CRASH_SHADOW:
 *   file-<inode>  the file's bytes at the call (all writes made before an fsync are durable after it);
 *   dir-<inode>   the folder's entries at the call ("<type> <inode> <name>" lines: names are durable once
 *                 their folder is fsynced).
 * tests/support/power_cut.py rebuilds the folder from these copies after SIGKILL: whatever was written
 * but never fsynced is gone, as after a power cut with a volatile page cache. Copies are written to a
 * temporary name and renamed, so concurrent fsyncs (threads, the aggregator process) never mix. */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned long counter;

static int under_root(int fd, char *path, size_t size) {
    const char *root = getenv("FLUXRUN_CRASH_ROOT");
    char link[64];
    if (root == NULL || getenv("FLUXRUN_CRASH_SHADOW") == NULL) return 0;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, size - 1);
    if (n < 0) return 0;
    path[n] = 0;
    size_t len = strlen(root);
    return strncmp(path, root, len) == 0 && (path[len] == 0 || path[len] == '/');
}

static void temp_name(char *tmp, size_t size, const char *shadow) {
    pthread_mutex_lock(&lock);
    unsigned long n = counter++;
    pthread_mutex_unlock(&lock);
    snprintf(tmp, size, "%s/.tmp-%d-%lu", shadow, (int)getpid(), n);
}

static void snapshot(int fd) {
    char path[PATH_MAX], tmp[PATH_MAX], dst[PATH_MAX], link[64];
    struct stat st;
    if (!under_root(fd, path, sizeof path) || fstat(fd, &st) != 0) return;
    const char *shadow = getenv("FLUXRUN_CRASH_SHADOW");
    temp_name(tmp, sizeof tmp, shadow);
    if (S_ISDIR(st.st_mode)) {
        DIR *dir = opendir(path);
        FILE *out = fopen(tmp, "w");
        if (dir == NULL || out == NULL) {
            if (dir) closedir(dir);
            if (out) fclose(out);
            return;
        }
        struct dirent *entry;
        while ((entry = readdir(dir)) != NULL) {
            if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0) continue;
            fprintf(out, "%c %lu %s\n", entry->d_type == DT_DIR ? 'd' : 'f', (unsigned long)entry->d_ino,
                    entry->d_name);
        }
        closedir(dir);
        fclose(out);
        snprintf(dst, sizeof dst, "%s/dir-%lu", shadow, (unsigned long)st.st_ino);
    } else if (S_ISREG(st.st_mode)) {
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        int in = open(link, O_RDONLY); /* the same inode, even if it is write-only or already unlinked */
        int out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (in < 0 || out < 0) {
            if (in >= 0) close(in);
            if (out >= 0) close(out);
            return;
        }
        char buf[65536];
        ssize_t n;
        while ((n = read(in, buf, sizeof buf)) > 0) {
            if (write(out, buf, (size_t)n) != n) break;
        }
        close(in);
        close(out);
        snprintf(dst, sizeof dst, "%s/file-%lu", shadow, (unsigned long)st.st_ino);
    } else {
        return;
    }
    rename(tmp, dst);
}

int fsync(int fd) {
    static int (*real)(int);
    if (real == NULL) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    snapshot(fd);
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (real == NULL) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    snapshot(fd);
    return real(fd);
}

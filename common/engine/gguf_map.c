/* gguf_map.c -- how a GGUF file's bytes get into memory: a read-only
 * mapping of the file (pd_gguf_open), or a private copy in 2 MB pages
 * (pd_gguf_open_resident, what pd_model_load uses).
 *
 * Why a copy. A decode step at batch 1 reads every weight once, as a few
 * long streams (kernels_rows.h). Through the file mapping those bytes sit
 * in the page cache's 4 KB pages: one TLB miss and one page walk every 4 KB
 * of every stream, and the hardware prefetchers restart at each 4 KB
 * boundary. In an anonymous mapping with MADV_HUGEPAGE the kernel backs the
 * copy with 2 MB pages (transparent huge pages, when the system allows
 * them: "always" or "madvise"), so a 630 MB model is ~315 TLB entries.
 * Measured on the TinyLlama-1.1B-shaped Q4_K_M file, batch 1, 1 thread
 * (docs/benchmarks.md). The cost: the copy's time at load (one pread of
 * the file, from the page cache when it is warm) and its memory, private
 * to the process where the mapping was shared through the page cache; a
 * file larger than half the machine's memory is mapped as before.
 * The bytes are the file's: the copy is made read-only before it is
 * parsed, as the mapping is. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/gguf_internal.h"

#define HUGE_BYTES ((size_t)2 << 20) /* a transparent huge page on x86-64 */

/* A private anonymous copy of fd's size bytes in a mapping aligned to
 * HUGE_BYTES and advised as huge-page memory; *map_len: its length for
 * munmap. NULL when the file is more than half the machine's memory or no
 * mapping could be made (the caller maps the file instead); a failed read
 * is an error (err set, *failed true). */
static uint8_t *copy_huge(int fd, const char *path, size_t size, size_t *map_len, bool *failed,
                          pd_err_t *err)
{
    *failed = false;
    /* a file near the machine's memory stays mapped: the page cache can
     * drop and reread its pages, a private copy could only be swapped */
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages <= 0 || page <= 0 || size / (size_t)page > (size_t)pages / 2 ||
        size > SIZE_MAX - 2 * HUGE_BYTES)
        return NULL;
    const size_t len = (size + HUGE_BYTES - 1) / HUGE_BYTES * HUGE_BYTES;
    uint8_t *raw = mmap(NULL, len + HUGE_BYTES, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (raw == MAP_FAILED)
        return NULL;
    /* keep the HUGE_BYTES-aligned part only */
    uint8_t *p = (uint8_t *)(((uintptr_t)raw + HUGE_BYTES - 1) & ~(uintptr_t)(HUGE_BYTES - 1));
    if (p > raw)
        munmap(raw, (size_t)(p - raw));
    if (raw + len + HUGE_BYTES > p + len)
        munmap(p + len, (size_t)(raw + len + HUGE_BYTES - (p + len)));
    (void)madvise(p, len, MADV_HUGEPAGE); /* advice: without THP, 4 KB pages */
    for (size_t got = 0; got < size;) {
        const size_t want = size - got < ((size_t)1 << 30) ? size - got : (size_t)1 << 30;
        const ssize_t n = pread(fd, p + got, want, (off_t)got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            pd_err_set(err, PD_EIO, "gguf: cannot read %s at byte %zu of %zu: %s", path, got, size,
                       n < 0 ? strerror(errno) : "unexpected end of file");
            munmap(p, len);
            *failed = true;
            return NULL;
        }
        got += (size_t)n;
    }
    if (mprotect(p, len, PROT_READ) != 0) {
        munmap(p, len);
        return NULL;
    }
    *map_len = len;
    return p;
}

int pd_gguf__map_file(const char *path, bool resident, const uint8_t **base, size_t *size,
                      size_t *map_len, pd_err_t *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return pd_err_set(err, PD_EIO, "gguf: cannot open %s: %s", path, strerror(errno));
    struct stat st;
    int rc = 0;
    *base = NULL;
    *map_len = 0;
    if (fstat(fd, &st) != 0) {
        rc = pd_err_set(err, PD_EIO, "gguf: cannot stat %s: %s", path, strerror(errno));
    } else if (!S_ISREG(st.st_mode)) {
        rc = pd_err_set(err, PD_EIO, "gguf: %s is not a regular file", path);
    } else if ((uint64_t)st.st_size > SIZE_MAX) {
        rc = pd_err_set(err, PD_EIO, "gguf: %s is too large to map", path);
    } else {
        *size = (size_t)st.st_size;
        bool failed = false;
        if (*size > 0 && resident)
            *base = copy_huge(fd, path, *size, map_len, &failed, err);
        if (failed) {
            rc = PD_EIO;
        } else if (*size > 0 && *base == NULL) {
            void *p = mmap(NULL, *size, PROT_READ, MAP_PRIVATE, fd, 0);
            if (p == MAP_FAILED)
                rc = pd_err_set(err, PD_EIO, "gguf: cannot mmap %s (%zu bytes): %s", path, *size,
                                strerror(errno));
            else {
                *base = p;
                *map_len = *size;
            }
        }
    }
    close(fd);
    return rc;
}

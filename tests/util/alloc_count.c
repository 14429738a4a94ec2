/*
 * LD_PRELOAD shim for tests/alloc_c.rs: counts every heap allocation of the
 * process it is loaded into, C and Rust alike, on every thread.
 *
 * Counted: malloc, calloc, realloc, reallocarray, posix_memalign,
 * aligned_alloc, memalign, valloc, pvalloc (free is not an allocation). Each
 * forwards to glibc's own implementation (__libc_*, exported for exactly this
 * use), so no dlsym, which itself allocates.
 *
 * The count lives in the file named by $CONN_ALLOC_COUNT_FILE, mapped shared:
 * the test reads it from outside (8 bytes, native endian) whenever it likes,
 * with no cooperation from the process. Without the variable, nothing is
 * recorded outside the process.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

extern void *__libc_malloc(size_t size);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *p, size_t size);
extern void *__libc_memalign(size_t align, size_t size);

/* Counts until the shared counter is mapped, which then takes over. */
static uint64_t early;
static uint64_t *counter = &early;

static void count(void)
{
    __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED);
}

__attribute__((constructor)) static void map_counter(void)
{
    const char *path = getenv("CONN_ALLOC_COUNT_FILE");
    if (!path)
        return;
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return;
    void *m = MAP_FAILED;
    if (ftruncate(fd, sizeof(uint64_t)) == 0)
        m = mmap(NULL, sizeof(uint64_t), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED)
        return;
    /* Constructors run before any thread exists: no count can be lost here. */
    *(uint64_t *)m = early;
    counter = m;
}

void *malloc(size_t size)
{
    count();
    return __libc_malloc(size);
}

void *calloc(size_t n, size_t size)
{
    count();
    return __libc_calloc(n, size);
}

void *realloc(void *p, size_t size)
{
    count();
    return __libc_realloc(p, size);
}

void *reallocarray(void *p, size_t n, size_t size)
{
    size_t bytes;
    count();
    if (__builtin_mul_overflow(n, size, &bytes)) {
        errno = ENOMEM;
        return NULL;
    }
    return __libc_realloc(p, bytes);
}

void *memalign(size_t align, size_t size)
{
    count();
    return __libc_memalign(align, size);
}

void *aligned_alloc(size_t align, size_t size)
{
    count();
    return __libc_memalign(align, size);
}

int posix_memalign(void **out, size_t align, size_t size)
{
    count();
    if (align < sizeof(void *) || (align & (align - 1)) != 0)
        return EINVAL;
    void *p = __libc_memalign(align, size);
    if (!p)
        return ENOMEM;
    *out = p;
    return 0;
}

void *valloc(size_t size)
{
    count();
    return __libc_memalign(getpagesize(), size);
}

void *pvalloc(size_t size)
{
    size_t page = getpagesize();
    count();
    return __libc_memalign(page, (size + page - 1) & ~(page - 1));
}

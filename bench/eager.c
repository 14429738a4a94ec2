/*
 * eager.c: the yardstick for bench/lean.sh, a bare "eager" fast-path loop.
 *
 * One thread, no epoll: a blocking accept4() on a 0.0.0.0:PORT listener with
 * SO_REUSEADDR and TCP_DEFER_ACCEPT (so a connection is only handed over once
 * its first bytes are there), then recv() into 4096 bytes until CRLFCRLF has
 * been seen (usually one call), send() the 57-byte answer, close(). That is
 * 4 system calls per request: the floor any server in this benchmark can reach.
 *
 * Any request gets the /test/fast answer: only /test/fast is sent to it.
 * SIGTERM/SIGINT end it with exit(0), so valgrind and strace see a clean exit.
 *
 * Build: cc -O2 -o eager bench/eager.c      Run: ./eager PORT
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static const char reply[] =
    "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";

static volatile sig_atomic_t stop;

static void on_stop(int sig) { (void)sig; stop = 1; }

/* Is CRLFCRLF in buf[0..len)? Looks only where a new chunk could complete it. */
static int complete(const char *buf, size_t len, size_t from)
{
    size_t i = from > 3 ? from - 3 : 0;
    for (; i + 4 <= len; i++)
        if (buf[i] == '\r' && buf[i + 1] == '\n' && buf[i + 2] == '\r' && buf[i + 3] == '\n')
            return 1;
    return 0;
}

static void serve(int fd)
{
    char buf[4096];
    size_t len = 0;
    for (;;) {
        ssize_t n = recv(fd, buf + len, sizeof buf - len, 0);
        if (n > 0) {
            size_t from = len;
            len += (size_t)n;
            if (complete(buf, len, from))
                break;
            if (len == sizeof buf)
                return; /* too long for a fast request: just close */
        } else if (n < 0 && errno == EINTR && !stop) {
            continue;
        } else {
            return; /* peer gone, error, or stopping */
        }
    }
    /* 57 bytes fit any socket buffer: one send, no partial write to loop on. */
    (void)send(fd, reply, sizeof reply - 1, MSG_NOSIGNAL);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s PORT\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[1]);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop; /* no SA_RESTART: accept4/recv return EINTR */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (ls < 0) { perror("socket"); return 1; }
    int one = 1, defer = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (setsockopt(ls, IPPROTO_TCP, TCP_DEFER_ACCEPT, &defer, sizeof defer) < 0) {
        perror("TCP_DEFER_ACCEPT");
        return 1;
    }
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    addr.sin_port = htons((unsigned short)port);
    if (bind(ls, (struct sockaddr *)&addr, sizeof addr) < 0) { perror("bind"); return 1; }
    if (listen(ls, SOMAXCONN) < 0) { perror("listen"); return 1; }

    while (!stop) {
        int fd = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED || errno == EMFILE ||
                errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
                continue;
            perror("accept4");
            return 1;
        }
        serve(fd);
        close(fd);
    }
    close(ls);
    return 0;
}

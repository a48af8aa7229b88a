/* TCP request/response rate, as netperf's TCP_RR measures it: one connection, one byte each
 * way, as many round trips as fit in the time given.
 *
 *   tcp_rr -s ADDRESS PORT             serve (one connection at a time, forever)
 *   tcp_rr -c ADDRESS PORT SECONDS     print round trips per second
 *
 * In C so the number is the kernel's path (veth, bridge, netfilter), not an interpreter's. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int addr_of(const char *ip, int port, struct sockaddr_storage *ss, socklen_t *len) {
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *v4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, ip, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons(port);
        *len = sizeof *v4;
        return AF_INET;
    }
    if (inet_pton(AF_INET6, ip, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons(port);
        *len = sizeof *v6;
        return AF_INET6;
    }
    fprintf(stderr, "bad address %s\n", ip);
    exit(2);
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: tcp_rr -s ADDRESS PORT | -c ADDRESS PORT SECONDS\n");
        return 2;
    }
    struct sockaddr_storage ss;
    socklen_t len;
    int family = addr_of(argv[2], atoi(argv[3]), &ss, &len);
    int one = 1;
    char byte = 'x';
    int s = socket(family, SOCK_STREAM, 0);
    if (s < 0) { perror("socket"); return 1; }
    if (strcmp(argv[1], "-s") == 0) {
        setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(s, (struct sockaddr *)&ss, len) < 0) { perror("bind"); return 1; }
        if (listen(s, 8) < 0) { perror("listen"); return 1; }
        printf("ready\n");
        fflush(stdout);
        for (;;) {
            int c = accept(s, NULL, NULL);
            if (c < 0) continue;
            setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            while (read(c, &byte, 1) == 1 && write(c, &byte, 1) == 1) {}
            close(c);
        }
    }
    if (argc < 5) { fprintf(stderr, "-c needs SECONDS\n"); return 2; }
    double seconds = atof(argv[4]);
    if (connect(s, (struct sockaddr *)&ss, len) < 0) { perror("connect"); return 1; }
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    long n = 0;
    double start = now(), end = start + seconds, t = start;
    while (t < end) {
        for (int i = 0; i < 100; i++) {
            if (write(s, &byte, 1) != 1 || read(s, &byte, 1) != 1) { perror("rr"); return 1; }
        }
        n += 100;
        t = now();
    }
    printf("%.1f\n", n / (t - start));
    close(s);
    return 0;
}

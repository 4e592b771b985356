/* Junk frames with hanet's EtherType, flat out, for bench/bench_flood.py.
 *
 *   flood_sender IFNAME MODE SECONDS NODE_ID
 *
 * MODE: auth     requests claiming NODE_ID, fresh sequence numbers, a wrong HMAC
 *       late     replies claiming NODE_ID that echo no request
 *       filtered requests claiming another node ("mallory")
 *       foreign  random lengths and bytes after the EtherType
 * Prints one JSON line: {"sent": N, "seconds": S, "rate": R}. Layout: hanet/wire.py. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define ETHERTYPE 0x88B5
#define FRAME_LEN 68
#define ETH_LEN 14
#define BATCH 64
#define MAX_LEN 256

static const uint8_t GROUP_MAC[6] = {0x03, 0x68, 0x61, 0x6e, 0x65, 0x74};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void put_u64(uint8_t *p, uint64_t v) {
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

/* One frame of ``mode`` into buf; returns its length. */
static size_t make_frame(uint8_t *buf, const char *mode, const char *node, uint64_t seq) {
    memcpy(buf, GROUP_MAC, 6);
    buf[6] = 0x02;                          /* a locally administered source */
    for (int i = 7; i < 12; i++)
        buf[i] = (uint8_t)rand();
    buf[12] = ETHERTYPE >> 8;
    buf[13] = ETHERTYPE & 0xff;
    uint8_t *f = buf + ETH_LEN;
    if (strcmp(mode, "foreign") == 0) {
        size_t n = 1 + (size_t)rand() % (MAX_LEN - ETH_LEN - 1);
        for (size_t i = 0; i < n; i++)
            f[i] = (uint8_t)rand();
        return ETH_LEN + n;
    }
    memset(f, 0, FRAME_LEN);
    f[0] = 1;                                               /* version */
    f[1] = strcmp(mode, "late") == 0 ? 2 : 1;               /* reply or request */
    strncpy((char *)f + 4, strcmp(mode, "filtered") == 0 ? "mallory" : node, 16);
    put_u64(f + 20, seq);
    put_u64(f + 28, 1);
    if (f[1] == 2) {
        put_u64(f + 36, (uint64_t)rand());                  /* echoes nothing sent */
        put_u64(f + 44, (uint64_t)rand());
    }
    for (int i = 52; i < FRAME_LEN; i++)
        f[i] = (uint8_t)rand();                             /* not the HMAC */
    return ETH_LEN + FRAME_LEN;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s IFNAME auth|late|filtered|foreign SECONDS NODE_ID\n", argv[0]);
        return 2;
    }
    const char *ifname = argv[1], *mode = argv[2], *node = argv[4];
    double seconds = atof(argv[3]);
    int fd = socket(AF_PACKET, SOCK_RAW, htons(ETHERTYPE));
    if (fd < 0) {
        perror("socket");
        return 1;
    }
    struct sockaddr_ll addr = {.sll_family = AF_PACKET, .sll_protocol = htons(ETHERTYPE),
                               .sll_ifindex = (int)if_nametoindex(ifname)};
    if (addr.sll_ifindex == 0 || bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        perror(ifname);
        return 1;
    }
    srand((unsigned)time(NULL));
    struct timespec wall;
    clock_gettime(CLOCK_REALTIME, &wall);
    uint64_t seq = (uint64_t)wall.tv_sec * 1000000000ull + (uint64_t)wall.tv_nsec + 1000000000000000ull;
    static uint8_t bufs[BATCH][MAX_LEN];
    struct iovec iov[BATCH];
    struct mmsghdr msgs[BATCH];
    uint64_t sent = 0;
    double start = now_s(), end = start + seconds;
    while (now_s() < end) {
        for (int k = 0; k < BATCH; k++) {
            iov[k].iov_base = bufs[k];
            iov[k].iov_len = make_frame(bufs[k], mode, node, seq++);
            memset(&msgs[k], 0, sizeof(msgs[k]));
            msgs[k].msg_hdr.msg_iov = &iov[k];
            msgs[k].msg_hdr.msg_iovlen = 1;
        }
        int n = sendmmsg(fd, msgs, BATCH, 0);
        if (n > 0)
            sent += (uint64_t)n;
    }
    double took = now_s() - start;
    printf("{\"sent\": %llu, \"seconds\": %.3f, \"rate\": %.0f}\n", (unsigned long long)sent, took, sent / took);
    close(fd);
    return 0;
}

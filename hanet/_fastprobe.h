/* C helpers of hanet/_fastprobe.pyx: everything that talks to the kernel or to libcrypto.
 *
 * Each helper returns a plain value or -errno and never blocks unless its name says so; the
 * .pyx holds the logic (sessions, replay window, counters) and calls these from its nogil loop.
 */
#ifndef HANET_FASTPROBE_H
#define HANET_FASTPROBE_H

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <net/if.h>
#include <linux/if_packet.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <linux/ethtool.h>
#include <linux/filter.h>
#include <linux/sockios.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#ifndef PACKET_IGNORE_OUTGOING
#define PACKET_IGNORE_OUTGOING 23
#endif
#ifndef SO_RCVBUFFORCE
#define SO_RCVBUFFORCE 33
#endif

/* ------------------------------------------------------------------ frame constants
 * The numbers of hanet/wire.py; the module refuses to import if they differ. */
#define HN_VERSION 1
#define HN_KIND_REQUEST 1
#define HN_KIND_REPLY 2
#define HN_KIND_NOTICE 3
#define HN_REQUEST_CONFIRM 1
#define HN_REQUEST_PROBE 2
#define HN_REQUEST_ECHO 3
#define HN_NODE_ID_LEN 16
#define HN_MAC_LEN 16
#define HN_BODY_LEN 52
#define HN_FRAME_LEN 68
#define HN_OFF_KIND 1
#define HN_OFF_PATH 2
#define HN_OFF_ACTIVE 3
#define HN_OFF_NODE_ID 4
#define HN_OFF_SEQ 20
#define HN_OFF_SEND_NS 28
#define HN_OFF_ECHO_SEQ 36
#define HN_OFF_ECHO_NS 44

/* ------------------------------------------------------------------ HMAC */

/* An HMAC-SHA256 context keyed once; NULL on failure. */
static EVP_MAC_CTX *hn_mac_new(const unsigned char *key, size_t key_len) {
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    EVP_MAC_CTX *ctx = mac ? EVP_MAC_CTX_new(mac) : NULL;
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    EVP_MAC_free(mac);  /* the context holds its own reference */
    if (ctx && !EVP_MAC_init(ctx, key, key_len, params)) {
        EVP_MAC_CTX_free(ctx);
        ctx = NULL;
    }
    return ctx;
}

/* HMAC of data truncated to out_len bytes. Re-initialising with a NULL key reuses the key
   schedule computed once by hn_mac_new (a quarter of the cost of a one-shot HMAC()). */
static int hn_mac(EVP_MAC_CTX *ctx, const unsigned char *data, size_t n, unsigned char *out,
                  size_t out_len) {
    unsigned char digest[EVP_MAX_MD_SIZE];
    size_t len = 0;
    if (!EVP_MAC_init(ctx, NULL, 0, NULL) || !EVP_MAC_update(ctx, data, n)
            || !EVP_MAC_final(ctx, digest, &len, sizeof digest) || len < out_len)
        return 0;
    memcpy(out, digest, out_len);
    return 1;
}

/* ------------------------------------------------------------------ clocks and waiting */

static int64_t hn_clock_ns(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Wait for fds until the absolute CLOCK_MONOTONIC deadline. */
static int hn_wait(struct pollfd *fds, int n, int64_t deadline_ns) {
    struct timespec tmo;
    int64_t left = deadline_ns - hn_clock_ns(CLOCK_MONOTONIC);
    if (left < 0)
        left = 0;
    tmo.tv_sec = left / 1000000000LL;
    tmo.tv_nsec = left % 1000000000LL;
    return ppoll(fds, n, &tmo, NULL);
}

/* SCHED_FIFO at priority for the calling thread: 0, or the errno. */
static int hn_realtime(int priority) {
    struct sched_param sp = { .sched_priority = priority };
    return pthread_setschedparam(pthread_self(), SCHED_FIFO, &sp);
}

/* ------------------------------------------------------------------ path socket */

/* The kernel-side filter of a path socket: only frames that could be the peer's heartbeat reach
   user space. Fixed for a path: the EtherType, the length, the version, a known kind, the peer's
   node id and (when configured) a source MAC out of the peer's set. The path byte is not
   filtered: a frame of another peer path is how crossed cables are told apart.
   With invert, the filter takes exactly the frames of the EtherType the other one refuses: a
   socket that never reads counts them (see hn_open_filter_counter). Returns 0 or -errno. */
#define HN_FILTER_MAX 64
#define HN_ACCEPT 0xFE
#define HN_REJECT 0xFF
static int hn_attach_filter(int fd, uint16_t ethertype, const uint8_t *peer_id,
                            const uint8_t (*macs)[6], int nmacs, int invert) {
    struct sock_filter prog[HN_FILTER_MAX];
    struct sock_fprog fprog;
    int n = 0, i, k;
#define HN_STMT(code, kk) (prog[n++] = (struct sock_filter)BPF_STMT(code, kk))
#define HN_JUMP(code, kk, jt, jf) (prog[n++] = (struct sock_filter)BPF_JUMP(code, kk, jt, jf))
    if (nmacs < 0 || nmacs > 8)
        return -EINVAL;
    HN_STMT(BPF_LD | BPF_H | BPF_ABS, SKF_AD_OFF + SKF_AD_PROTOCOL);
    HN_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ethertype, 0, HN_REJECT);
    HN_STMT(BPF_LD | BPF_W | BPF_LEN, 0);
    HN_JUMP(BPF_JMP | BPF_JEQ | BPF_K, HN_FRAME_LEN, 0, HN_REJECT);
    HN_STMT(BPF_LD | BPF_B | BPF_ABS, 0);
    HN_JUMP(BPF_JMP | BPF_JEQ | BPF_K, HN_VERSION, 0, HN_REJECT);
    HN_STMT(BPF_LD | BPF_B | BPF_ABS, HN_OFF_KIND);
    HN_JUMP(BPF_JMP | BPF_JGT | BPF_K, HN_KIND_NOTICE, HN_REJECT, 0);
    HN_JUMP(BPF_JMP | BPF_JGE | BPF_K, HN_KIND_REQUEST, 0, HN_REJECT);
    for (i = 0; i < HN_NODE_ID_LEN; i += 4) {
        uint32_t word = (uint32_t)peer_id[i] << 24 | (uint32_t)peer_id[i + 1] << 16
                      | (uint32_t)peer_id[i + 2] << 8 | peer_id[i + 3];
        HN_STMT(BPF_LD | BPF_W | BPF_ABS, HN_OFF_NODE_ID + i);
        HN_JUMP(BPF_JMP | BPF_JEQ | BPF_K, word, 0, HN_REJECT);
    }
    /* Source MAC: the link-layer header sits before the payload of a SOCK_DGRAM socket. */
    for (k = 0; k < nmacs; k++) {
        const uint8_t *m = macs[k];
        int last = k == nmacs - 1;
        HN_STMT(BPF_LD | BPF_W | BPF_ABS, SKF_LL_OFF + 6);
        HN_JUMP(BPF_JMP | BPF_JEQ | BPF_K,
                (uint32_t)m[0] << 24 | (uint32_t)m[1] << 16 | (uint32_t)m[2] << 8 | m[3],
                0, last ? HN_REJECT : 2);
        HN_STMT(BPF_LD | BPF_H | BPF_ABS, SKF_LL_OFF + 10);
        HN_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)m[4] << 8 | m[5],
                HN_ACCEPT, last ? HN_REJECT : 0);
    }
    /* the two exits: accept (the whole frame), reject (nothing) */
    HN_STMT(BPF_RET | BPF_K, invert ? 0 : 0x40000);
    HN_STMT(BPF_RET | BPF_K, invert ? 0x40000 : 0);
#undef HN_STMT
#undef HN_JUMP
    for (i = 0; i < n - 2; i++) {
        if (BPF_CLASS(prog[i].code) != BPF_JMP)
            continue;
        if (prog[i].jt == HN_ACCEPT) prog[i].jt = n - 2 - i - 1;
        if (prog[i].jt == HN_REJECT) prog[i].jt = n - 1 - i - 1;
        if (prog[i].jf == HN_ACCEPT) prog[i].jf = n - 2 - i - 1;
        if (prog[i].jf == HN_REJECT) prog[i].jf = n - 1 - i - 1;
    }
    fprog.len = n;
    fprog.filter = prog;
    if (setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &fprog, sizeof fprog) < 0)
        return -errno;
    return 0;
}

/* A receive ring (PACKET_RX_RING, TPACKET_V2) shared with the kernel: it copies each frame
   the filter passes into the next free slot while it receives it, and the loop reads the slots
   in place, with no system call and no socket buffer per frame. A flood then costs the loop
   only its own checks; a full ring drops (and counts, PACKET_STATISTICS) the newest frames. */
#define HN_SLOT_SIZE 256
typedef struct {
    uint8_t *map;
    size_t map_len;
    unsigned slots;
    unsigned next;
} hn_ring;

/* Map a ring of about bytes on fd (before bind is best, not required). 0 or -errno. */
static int hn_ring_open(int fd, hn_ring *r, int bytes) {
    int version = TPACKET_V2;
    struct tpacket_req req;
    unsigned block = 1 << 16;  /* few large blocks: the ring is allocated in a few calls */
    unsigned per_block = block / HN_SLOT_SIZE;
    unsigned blocks = (unsigned)(bytes / block);
    if (blocks < 2)
        blocks = 2;
    memset(r, 0, sizeof *r);
    memset(&req, 0, sizeof req);
    req.tp_block_size = block;
    req.tp_block_nr = blocks;
    req.tp_frame_size = HN_SLOT_SIZE;
    req.tp_frame_nr = blocks * per_block;
    if (setsockopt(fd, SOL_PACKET, PACKET_VERSION, &version, sizeof version) < 0
            || setsockopt(fd, SOL_PACKET, PACKET_RX_RING, &req, sizeof req) < 0)
        return -errno;
    r->map_len = (size_t)req.tp_block_size * req.tp_block_nr;
    r->map = mmap(NULL, r->map_len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (r->map == MAP_FAILED) {
        r->map = NULL;
        return -errno;
    }
    r->slots = req.tp_frame_nr;
    return 0;
}

static void hn_ring_close(hn_ring *r) {
    if (r->map)
        munmap(r->map, r->map_len);
    memset(r, 0, sizeof *r);
}

/* The next frame the kernel has filled, or 0: its data (len: the frame's full length, which may
   exceed what the slot holds), sender and kernel receive time (CLOCK_REALTIME ns). Hand the slot
   back with hn_ring_done before asking for the next. */
static int hn_ring_next(hn_ring *r, const uint8_t **data, ssize_t *len, struct sockaddr_ll **from,
                        int64_t *rx_realtime_ns) {
    struct tpacket2_hdr *h = (struct tpacket2_hdr *)(r->map + (size_t)r->next * HN_SLOT_SIZE);
    if (!(__atomic_load_n(&h->tp_status, __ATOMIC_ACQUIRE) & TP_STATUS_USER))
        return 0;
    *data = (const uint8_t *)h + h->tp_net;
    /* The full length, for the length checks; a slot holds a whole frame of FRAME_LEN, so
       the checks never read past it. */
    *len = h->tp_len;
    *from = (struct sockaddr_ll *)((uint8_t *)h + TPACKET_ALIGN(sizeof(struct tpacket2_hdr)));
    *rx_realtime_ns = (int64_t)h->tp_sec * 1000000000LL + h->tp_nsec;
    return 1;
}

static void hn_ring_done(hn_ring *r) {
    struct tpacket2_hdr *h = (struct tpacket2_hdr *)(r->map + (size_t)r->next * HN_SLOT_SIZE);
    __atomic_store_n(&h->tp_status, TP_STATUS_KERNEL, __ATOMIC_RELEASE);
    r->next = (r->next + 1) % r->slots;
}

/* A packet socket of ethertype bound to ifindex with the filter attached before the bind, so no
   unfiltered frame is ever queued, and (ring not NULL) its receive ring of ring_bytes mapped
   before the bind too (on a bound socket the kernel waits out an RCU grace period, ~10 ms, to
   set one). ring->map stays NULL if the kernel refuses a ring. -errno on failure. */
static int hn_filtered_socket(int ifindex, uint16_t ethertype, const uint8_t *peer_id,
                              const uint8_t (*macs)[6], int nmacs, int invert, hn_ring *ring,
                              int ring_bytes) {
    struct sockaddr_ll addr;
    int err, fd = socket(AF_PACKET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0)
        return -errno;
    /* Our own transmissions are not input (kernels before 4.20 lack it; the node id filter
       refuses them too, but the counting socket would count them). */
    setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof one);
    err = hn_attach_filter(fd, ethertype, peer_id, macs, nmacs, invert);
    if (ring != NULL && hn_ring_open(fd, ring, ring_bytes) < 0)
        memset(ring, 0, sizeof *ring);
    if (err == 0) {
        memset(&addr, 0, sizeof addr);
        addr.sll_family = AF_PACKET;
        addr.sll_protocol = htons(ethertype);
        addr.sll_ifindex = ifindex;
        if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0)
            err = -errno;
    }
    if (err) {
        close(fd);
        if (ring != NULL)
            hn_ring_close(ring);
        return err;
    }
    return fd;
}

/* The socket that counts what the path filter refuses: it takes exactly those frames, with the
   smallest receive buffer, and is never read, so after its first few frames the kernel counts
   each one as a drop (PACKET_STATISTICS) without queueing it. */
static int hn_open_filter_counter(int ifindex, uint16_t ethertype, const uint8_t *peer_id,
                                  const uint8_t (*macs)[6], int nmacs) {
    int fd = hn_filtered_socket(ifindex, ethertype, peer_id, macs, nmacs, 1, NULL, 0);
    int small = 1;  /* the kernel raises it to its minimum */
    if (fd >= 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    return fd;
}

/* Receive buffer of bytes: SO_RCVBUFFORCE (CAP_NET_ADMIN, past net.core.rmem_max), else the
   most SO_RCVBUF allows. Returns the size the kernel granted (it doubles the request). */
static int hn_set_rcvbuf(int fd, int bytes) {
    int got = 0;
    socklen_t len = sizeof got;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &bytes, sizeof bytes) < 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof bytes);
    getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &got, &len);
    return got;
}

/* Frames the socket took (after its filter) and dropped for a full buffer since the last call
   (the kernel resets its counters on each read). 0 or -errno. */
static int hn_packet_stats(int fd, uint64_t *packets, uint64_t *drops) {
    struct tpacket_stats st;
    socklen_t len = sizeof st;
    if (fd < 0)
        return -EBADF;
    if (getsockopt(fd, SOL_PACKET, PACKET_STATISTICS, &st, &len) < 0)
        return -errno;
    *packets += st.tp_packets;
    *drops += st.tp_drops;
    return 0;
}

/* A received frame, its sender address and kernel receive time (CLOCK_REALTIME ns, 0 if
   none). len is the frame's full length even when longer than data (MSG_TRUNC). */
#define HN_BATCH 32
typedef struct {
    unsigned char data[128];
    struct sockaddr_ll from;
    int64_t rx_realtime_ns;
    ssize_t len;
} hn_datagram;

/* Up to max (<= HN_BATCH) queued frames in one recvmmsg() without blocking: the count, or
   -errno. */
static int hn_recv_batch(int fd, hn_datagram *d, int max) {
    struct mmsghdr msgs[HN_BATCH];
    struct iovec iov[HN_BATCH];
    char control[HN_BATCH][CMSG_SPACE(sizeof(struct timespec))];
    if (max > HN_BATCH)
        max = HN_BATCH;
    memset(msgs, 0, sizeof msgs[0] * max);
    for (int i = 0; i < max; i++) {
        iov[i].iov_base = d[i].data;
        iov[i].iov_len = sizeof d[i].data;
        msgs[i].msg_hdr.msg_name = &d[i].from;
        msgs[i].msg_hdr.msg_namelen = sizeof d[i].from;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_control = control[i];
        msgs[i].msg_hdr.msg_controllen = sizeof control[i];
    }
    int got = recvmmsg(fd, msgs, max, MSG_DONTWAIT | MSG_TRUNC, NULL);
    if (got < 0)
        return -errno;
    for (int i = 0; i < got; i++) {
        struct msghdr *msg = &msgs[i].msg_hdr;
        d[i].len = msgs[i].msg_len;
        d[i].rx_realtime_ns = 0;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c; c = CMSG_NXTHDR(msg, c)) {
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SO_TIMESTAMPNS) {
                struct timespec ts;
                memcpy(&ts, CMSG_DATA(c), sizeof ts);
                d[i].rx_realtime_ns = (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
            }
        }
    }
    return got;
}

/* Clear a pending socket error (ENETDOWN when the NIC goes down): poll() keeps reporting
   POLLERR until it is read, and a ring socket is never read with recv(). Returns the error. */
static int hn_clear_error(int fd) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
    return err;
}

/* ------------------------------------------------------------------ carrier */

/* Carrier bit of ifname through ETHTOOL_GLINK: 1/0, or -errno (-ENODEV once the interface is
   gone). The kernel takes its global RTNL lock for it: never on the heartbeat loop's hot path. */
static int hn_carrier_ioctl(int fd, const char *ifname) {
    struct ethtool_value ev = { .cmd = ETHTOOL_GLINK, .data = 0 };
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strncpy(ifr.ifr_name, ifname, IFNAMSIZ - 1);
    ifr.ifr_data = (char *)&ev;
    if (ioctl(fd, SIOCETHTOOL, &ifr) < 0)
        return -errno;
    return ev.data ? 1 : 0;
}

/* An unsigned decimal (or 0x hex) sysfs value read with pread at offset 0, or -errno. */
static int64_t hn_sysfs_read(int fd) {
    char buf[32];
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    if (n < 0)
        return -errno;
    if (n == 0)
        return -EIO;
    buf[n] = 0;
    return (int64_t)strtoll(buf, NULL, 0);
}

#ifndef FSCONFIG_CMD_CREATE
#define FSCONFIG_CMD_CREATE 6
#endif
#ifndef SYS_fsopen
#define SYS_fsopen 430
#define SYS_fsconfig 431
#define SYS_fsmount 432
#endif

/* A detached sysfs mount of the calling thread's network namespace (needs CAP_SYS_ADMIN over
   it): for a thread that entered a namespace with setns(2) and so sees another one's /sys. */
static int hn_private_sysfs(void) {
    int fs = syscall(SYS_fsopen, "sysfs", 1 /* FSOPEN_CLOEXEC */);
    int mnt;
    if (fs < 0)
        return -errno;
    if (syscall(SYS_fsconfig, fs, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0) {
        int err = errno;
        close(fs);
        return -err;
    }
    mnt = syscall(SYS_fsmount, fs, 1 /* FSMOUNT_CLOEXEC */, 0);
    close(fs);
    return mnt < 0 ? -errno : mnt;
}

/* Open ifname's lock-free carrier counters (carrier_up_count, carrier_down_count) and flags in
   the sysfs of the calling thread's namespace, checked against ifindex (a /sys mounted for
   another namespace may hold an interface of the same name). fds[3] are set on success.
   Returns 0, or -errno (-EXDEV: no sysfs of this namespace could be reached). */
static int hn_sysfs_open(const char *ifname, int ifindex, int fds[3]) {
    static const char *names[3] = { "carrier_up_count", "carrier_down_count", "flags" };
    char path[96];
    int roots[2] = { AT_FDCWD, -1 }, r, k, idx_fd, err = -EXDEV;
    for (r = 0; r < 2; r++) {
        const char *base = r == 0 ? "/sys/class/net" : "class/net";
        if (r == 1) {
            roots[1] = hn_private_sysfs();
            if (roots[1] < 0)
                return err;
        }
        snprintf(path, sizeof path, "%s/%s/ifindex", base, ifname);
        idx_fd = openat(roots[r], path, O_RDONLY | O_CLOEXEC);
        if (idx_fd < 0)
            continue;
        int64_t idx = hn_sysfs_read(idx_fd);
        close(idx_fd);
        if (idx != ifindex)
            continue;
        for (k = 0; k < 3; k++) {
            snprintf(path, sizeof path, "%s/%s/%s", base, ifname, names[k]);
            fds[k] = openat(roots[r], path, O_RDONLY | O_CLOEXEC);
            if (fds[k] < 0) {
                err = -errno;
                while (k-- > 0)
                    close(fds[k]);
                break;
            }
        }
        if (k == 3) {
            if (roots[1] >= 0)
                close(roots[1]);  /* open files keep the mount alive */
            return 0;
        }
    }
    if (roots[1] >= 0)
        close(roots[1]);
    return err;
}

/* The carrier from the lock-free counters: netif_carrier_off/on bump carrier_down_count and
   carrier_up_count on each change (before link-watch runs) and the carrier starts on with both at
   0, so it is on exactly when the two are equal; an interface set down has no carrier either,
   as ETHTOOL_GLINK says. The down count is read twice: a change between the reads is read again.
   1/0, or -errno (-ENODEV once the interface is gone). */
static int hn_carrier_counters(const int fds[3]) {
    for (int attempt = 0; attempt < 4; attempt++) {
        int64_t down = hn_sysfs_read(fds[1]);
        int64_t up = hn_sysfs_read(fds[0]);
        int64_t flags = hn_sysfs_read(fds[2]);
        if (down < 0 || up < 0 || flags < 0)
            return (int)(down < 0 ? down : up < 0 ? up : flags);
        if (hn_sysfs_read(fds[1]) == down)
            return (flags & IFF_UP) && up == down ? 1 : 0;
    }
    return -EAGAIN;
}

#endif

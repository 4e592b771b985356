# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# distutils: libraries = crypto
"""Heartbeat hot path: AF_PACKET sockets, frame codec, HMAC check and the probe loop without the GIL.

One thread serves every path. It sends requests on absolute CLOCK_MONOTONIC deadlines: each
ppoll() waits until the next deadline, recomputed from the absolute time, so periods never drift
(with 1 us timer slack this wakes as early as a timerfd would, without its extra syscalls). It
answers the peer's requests, matches replies, reads each path's carrier bit with the
ETHTOOL_GLINK ioctl, and queues only threshold events for Python, signalled through an eventfd.
All shared state sits in one ``Core`` behind one mutex; the loop holds it except while it waits
in ppoll(), so Python's calls (stats, drain, pause, notice, rebind) see a consistent snapshot and
never wait longer than one loop pass.

The frame layout is documented in hanet/frame.py (the pure-Python reference codec); the codec
here must agree with it byte for byte.
"""
from libc.stdint cimport uint8_t, uint16_t, uint64_t, int64_t
from libc.string cimport memcpy, memset, memcmp, strncpy
from libc.stdlib cimport calloc, free, malloc

from hanet.frame import Frame

cdef extern from * nogil:
    """
    #include <errno.h>
    #include <poll.h>
    #include <pthread.h>
    #include <sched.h>
    #include <string.h>
    #include <time.h>
    #include <unistd.h>
    #include <arpa/inet.h>
    #include <net/if.h>
    #include <netpacket/packet.h>
    #include <sys/eventfd.h>
    #include <sys/ioctl.h>
    #include <sys/prctl.h>
    #include <sys/socket.h>
    #include <linux/ethtool.h>
    #include <linux/sockios.h>
    #include <openssl/core_names.h>
    #include <openssl/crypto.h>
    #include <openssl/evp.h>
    #include <openssl/params.h>
    #ifndef PACKET_IGNORE_OUTGOING
    #define PACKET_IGNORE_OUTGOING 23
    #endif

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

    /* Carrier bit of ifname: 1/0, or -errno (-ENODEV once the interface is gone). */
    static int hn_carrier(int fd, const char *ifname) {
        struct ethtool_value ev = { .cmd = ETHTOOL_GLINK, .data = 0 };
        struct ifreq ifr;
        memset(&ifr, 0, sizeof ifr);
        strncpy(ifr.ifr_name, ifname, IFNAMSIZ - 1);
        ifr.ifr_data = (char *)&ev;
        if (ioctl(fd, SIOCETHTOOL, &ifr) < 0)
            return -errno;
        return ev.data ? 1 : 0;
    }

    static int64_t hn_clock_ns(clockid_t clock) {
        struct timespec ts;
        clock_gettime(clock, &ts);
        return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    }

    /* A received frame, its sender address and kernel receive time (CLOCK_REALTIME ns, 0 if
       none). len is the frame's full length even when longer than data (MSG_TRUNC). */
    #define HN_BATCH 16
    typedef struct {
        unsigned char data[128];
        struct sockaddr_ll from;
        int64_t rx_realtime_ns;
        ssize_t len;
    } hn_datagram;

    /* Up to HN_BATCH queued frames in one recvmmsg() without blocking: the count, or -errno. */
    static int hn_recv_batch(int fd, hn_datagram *d) {
        struct mmsghdr msgs[HN_BATCH];
        struct iovec iov[HN_BATCH];
        char control[HN_BATCH][CMSG_SPACE(sizeof(struct timespec))];
        memset(msgs, 0, sizeof msgs);
        for (int i = 0; i < HN_BATCH; i++) {
            iov[i].iov_base = d[i].data;
            iov[i].iov_len = sizeof d[i].data;
            msgs[i].msg_hdr.msg_name = &d[i].from;
            msgs[i].msg_hdr.msg_namelen = sizeof d[i].from;
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_control = control[i];
            msgs[i].msg_hdr.msg_controllen = sizeof control[i];
        }
        int got = recvmmsg(fd, msgs, HN_BATCH, MSG_DONTWAIT | MSG_TRUNC, NULL);
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

    /* Wait for fds until the absolute CLOCK_MONOTONIC deadline. */
    static int hn_wait(struct pollfd *fds, int n, int64_t deadline_ns) {
        struct timespec now, tmo;
        int64_t left;
        clock_gettime(CLOCK_MONOTONIC, &now);
        left = deadline_ns - ((int64_t)now.tv_sec * 1000000000LL + now.tv_nsec);
        if (left < 0)
            left = 0;
        tmo.tv_sec = left / 1000000000LL;
        tmo.tv_nsec = left % 1000000000LL;
        return ppoll(fds, n, &tmo, NULL);
    }

    /* Lateness (ns) of count clock_nanosleep() wake-ups on absolute period_ns deadlines. */
    static void hn_sleep_lateness(int64_t period_ns, int count, int64_t *out) {
        int64_t deadline = hn_clock_ns(CLOCK_MONOTONIC);
        for (int i = 0; i < count; i++) {
            struct timespec ts;
            deadline += period_ns;
            ts.tv_sec = deadline / 1000000000LL;
            ts.tv_nsec = deadline % 1000000000LL;
            while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
                ;
            out[i] = hn_clock_ns(CLOCK_MONOTONIC) - deadline;
        }
    }

    /* SCHED_FIFO at priority for the calling thread: 0, or the errno. */
    static int hn_realtime(int priority) {
        struct sched_param sp = { .sched_priority = priority };
        return pthread_setschedparam(pthread_self(), SCHED_FIFO, &sp);
    }

    static void hn_normal_priority(void) {
        struct sched_param sp = { .sched_priority = 0 };
        pthread_setschedparam(pthread_self(), SCHED_OTHER, &sp);
    }


    """
    ctypedef int clockid_t
    ctypedef unsigned int socklen_t
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct EVP_MAC_CTX:
        pass
    struct sockaddr:
        pass
    struct sockaddr_ll:
        unsigned short sll_family
        unsigned short sll_protocol
        int sll_ifindex
        unsigned short sll_hatype
        unsigned char sll_pkttype
        unsigned char sll_halen
        unsigned char sll_addr[8]
    struct packet_mreq:
        int mr_ifindex
        unsigned short mr_type
        unsigned short mr_alen
        unsigned char mr_address[8]
    struct pollfd:
        int fd
        short events
        short revents

    int hn_carrier(int fd, const char *ifname)
    enum: HN_BATCH
    ctypedef struct hn_datagram:
        unsigned char data[128]
        sockaddr_ll frm "from"
        int64_t rx_realtime_ns
        ssize_t len
    int hn_recv_batch(int fd, hn_datagram *d)
    int hn_wait(pollfd *fds, int n, int64_t deadline_ns)
    int hn_realtime(int priority)
    void hn_sleep_lateness(int64_t period_ns, int count, int64_t *out)
    void hn_normal_priority()
    int64_t hn_clock_ns(clockid_t clock)

    int errno
    int ENODEV
    clockid_t CLOCK_MONOTONIC, CLOCK_REALTIME
    short POLLIN
    int AF_INET, AF_PACKET, SOCK_DGRAM, SOCK_NONBLOCK, SOCK_CLOEXEC
    int SOL_SOCKET, SO_TIMESTAMPNS, SOL_PACKET, PACKET_ADD_MEMBERSHIP, PACKET_MR_MULTICAST
    int PACKET_IGNORE_OUTGOING, PACKET_OUTGOING
    int EFD_NONBLOCK, EFD_CLOEXEC
    int PR_SET_TIMERSLACK, PR_GET_TIMERSLACK

    int pthread_mutex_init(pthread_mutex_t *m, void *attr)
    int pthread_mutex_destroy(pthread_mutex_t *m)
    int pthread_mutex_lock(pthread_mutex_t *m)
    int pthread_mutex_unlock(pthread_mutex_t *m)
    int eventfd(unsigned int initval, int flags)
    int prctl(int option, unsigned long arg2, unsigned long arg3, unsigned long arg4, unsigned long arg5)
    ssize_t read(int fd, void *buf, size_t n)
    ssize_t write(int fd, const void *buf, size_t n)
    int close(int fd)
    int socket(int domain, int kind, int protocol)
    int bind(int fd, const sockaddr *addr, socklen_t len)
    int setsockopt(int fd, int level, int name, const void *value, socklen_t len)
    ssize_t sendto(int fd, const void *buf, size_t n, int flags, const sockaddr *addr, socklen_t len)
    uint16_t htons(uint16_t v)
    unsigned int if_nametoindex(const char *name)
    char *strerror(int errnum)
    void qsort(void *base, size_t n, size_t size, int (*cmp)(const void *, const void *) noexcept nogil)

    EVP_MAC_CTX *hn_mac_new(const unsigned char *key, size_t key_len)
    int hn_mac(EVP_MAC_CTX *ctx, const unsigned char *data, size_t n, unsigned char *out, size_t out_len)
    void EVP_MAC_CTX_free(EVP_MAC_CTX *ctx)
    int CRYPTO_memcmp(const void *a, const void *b, size_t n)


# --------------------------------------------------------------------------- frame codec
cdef enum:
    VERSION = 1
    KIND_REQUEST = 1
    KIND_REPLY = 2
    KIND_NOTICE = 3
    NODE_ID_LEN = 16
    MAC_LEN = 16
    BODY_LEN = 52
    FRAME_LEN = 68

# Drop reasons, in counter order. The first five come from the stateless decode.
cdef enum:
    DROP_SHORT = 0
    DROP_LONG
    DROP_VERSION
    DROP_AUTH
    DROP_KIND
    DROP_NODE
    DROP_PATH
    DROP_SRC_MAC
    DROP_REPLAY
    DROP_STALE
    DROP_LATE
    N_DROPS
    FRAME_OK = -1

DROP_REASONS = ("short", "long", "version", "auth", "kind", "node", "path", "src_mac", "replay",
                "stale", "late")

cdef uint8_t GROUP_MAC[6]
GROUP_MAC[:] = [0x03, 0x68, 0x61, 0x6e, 0x65, 0x74]  # "\x03hanet", locally administered multicast

cdef struct Parsed:
    int kind
    int path
    int active
    uint8_t node_id[NODE_ID_LEN]
    uint64_t seq
    int64_t send_ns
    uint64_t echo_seq
    int64_t echo_ns


cdef inline void put_u64(uint8_t *p, uint64_t v) noexcept nogil:
    cdef int i
    for i in range(8):
        p[i] = <uint8_t>(v >> (56 - 8 * i))


cdef inline uint64_t get_u64(const uint8_t *p) noexcept nogil:
    cdef uint64_t v = 0
    cdef int i
    for i in range(8):
        v = (v << 8) | p[i]
    return v


cdef void build_frame(uint8_t *out, EVP_MAC_CTX *mac, int kind, int path, int active,
                      const uint8_t *node_id, uint64_t seq, int64_t send_ns, uint64_t echo_seq,
                      int64_t echo_ns) noexcept nogil:
    out[0] = VERSION
    out[1] = <uint8_t>kind
    out[2] = <uint8_t>path
    out[3] = <uint8_t>active
    memcpy(out + 4, node_id, NODE_ID_LEN)
    put_u64(out + 20, seq)
    put_u64(out + 28, <uint64_t>send_ns)
    put_u64(out + 36, echo_seq)
    put_u64(out + 44, <uint64_t>echo_ns)
    if not hn_mac(mac, out, BODY_LEN, out + BODY_LEN, MAC_LEN):
        memset(out + BODY_LEN, 0, MAC_LEN)  # cannot happen with a working libcrypto; peer drops it


cdef int parse_frame(EVP_MAC_CTX *mac, const uint8_t *data, ssize_t n, Parsed *f) noexcept nogil:
    """FRAME_OK with ``f`` filled, or the drop reason. Authenticates before reading any field."""
    cdef uint8_t expect[MAC_LEN]
    if n < 1:
        return DROP_SHORT
    if data[0] != VERSION:
        return DROP_VERSION
    if n < FRAME_LEN:
        return DROP_SHORT
    if n > FRAME_LEN:
        return DROP_LONG
    if not hn_mac(mac, data, BODY_LEN, expect, MAC_LEN) or CRYPTO_memcmp(expect, data + BODY_LEN, MAC_LEN) != 0:
        return DROP_AUTH
    if data[1] < KIND_REQUEST or data[1] > KIND_NOTICE:
        return DROP_KIND
    f.kind = data[1]
    f.path = data[2]
    f.active = data[3]
    memcpy(f.node_id, data + 4, NODE_ID_LEN)
    f.seq = get_u64(data + 20)
    f.send_ns = <int64_t>get_u64(data + 28)
    f.echo_seq = get_u64(data + 36)
    f.echo_ns = <int64_t>get_u64(data + 44)
    return FRAME_OK


cdef EVP_MAC_CTX *keyed_mac(bytes key) except NULL:
    cdef EVP_MAC_CTX *mac = hn_mac_new(key, len(key))
    if mac == NULL:
        raise ValueError("libcrypto refused the HMAC-SHA256 key")
    return mac


def encode(bytes key, frame):
    """The frame's bytes (same contract as hanet.frame.encode)."""
    cdef uint8_t out[FRAME_LEN]
    cdef bytes node_id = frame.node_id
    if len(node_id) != NODE_ID_LEN:
        raise ValueError(f"node_id must be {NODE_ID_LEN} bytes")
    cdef EVP_MAC_CTX *mac = keyed_mac(key)
    build_frame(out, mac, frame.kind, frame.path, frame.active, node_id, frame.seq,
                frame.send_ns, frame.echo_seq, frame.echo_ns)
    EVP_MAC_CTX_free(mac)
    return out[:FRAME_LEN]


def decode(bytes key, const uint8_t[:] data not None):
    """("ok", Frame) or (drop reason, None); never raises (same contract as hanet.frame.decode)."""
    cdef Parsed f
    cdef int code
    cdef const uint8_t *ptr = &data[0] if data.shape[0] > 0 else NULL
    cdef EVP_MAC_CTX *mac = keyed_mac(key)
    code = parse_frame(mac, ptr, data.shape[0], &f)
    EVP_MAC_CTX_free(mac)
    if code != FRAME_OK:
        return DROP_REASONS[code], None
    return "ok", Frame(kind=f.kind, path=f.path, node_id=f.node_id[:NODE_ID_LEN], seq=f.seq,
                       send_ns=f.send_ns, active=f.active, echo_seq=f.echo_seq, echo_ns=f.echo_ns)


# --------------------------------------------------------------------------- prober state
cdef enum:
    MAX_PATHS = 8
    SAMPLES = 4096          # RTT and send-lag samples kept per path (a ring)
    EVENT_QUEUE = 16384     # threshold events waiting for drain()
    WINDOW_BITS = 1024      # replay window bitmap; config caps heartbeat.replay_window here
    WINDOW_WORDS = 16
    RECV_BATCHES = 4        # recvmmsg() calls per socket per wake, so one busy path cannot starve others
    NOTICE_COPIES = 3
    NOTICE_GAP_NS = 2000000
    REPLY_TIMEOUT_FLOOR_NS = 250000   # the adaptive reply timeout never goes below 250 us

cdef enum:
    STATE_UNKNOWN = 0
    STATE_UP
    STATE_SUSPECT
    STATE_LOST

STATES = ("unknown", "up", "suspect", "lost")

cpdef enum EventKind:  # also visible from Python, for hanet.probe to map to hanet.model
    EV_SUSPECT = 1
    EV_LOST = 2
    EV_CLEARED = 3
    EV_RECOVERED = 4
    EV_LINK_DOWN = 5
    EV_LINK_UP = 6
    EV_NOTICE = 7
    EV_QUALITY = 8

cdef struct Event:
    int kind
    int path
    int64_t t_ns
    int64_t a
    int64_t b
    int64_t c
    int64_t d

cdef struct Path:
    int fd                  # -1 while the interface is gone and not yet rebound
    int ifindex
    char ifname[16]
    uint8_t peer_mac[6]
    bint check_peer_mac
    int carrier             # last polled carrier bit
    # prober
    int64_t next_send
    bint outstanding        # a reply to out_seq is still accepted (until the next request)
    uint64_t out_seq
    int64_t out_sent_ns
    int64_t reply_deadline  # when out_seq's miss counts; 0 once it is answered or counted
    int64_t srtt            # smoothed RTT and its mean deviation (RFC 6298), for the auto timeout
    int64_t rttvar
    int state
    int misses
    int oks
    bint paused
    int64_t first_miss_ns
    int64_t win_send_lag_max   # lag maxima since the last reply in steady state or last event
    int64_t win_recv_delay_max
    # replay window over the peer's sequence numbers
    bint rx_have
    uint64_t rx_top
    uint64_t rx_bits[WINDOW_WORDS]
    # counters
    uint64_t sent
    uint64_t received
    uint64_t answered
    uint64_t send_errors
    uint64_t notices_sent
    uint64_t notices_received
    uint64_t drops[N_DROPS]
    int64_t rtt[SAMPLES]
    uint64_t rtt_n
    int64_t rtt_max
    int64_t last_reply_ns
    int64_t lag[SAMPLES]
    uint64_t lag_n
    int64_t lag_max
    # peer notice
    int notice_left
    int notice_active
    uint64_t notice_id
    int64_t notice_next
    bint rx_notice_have
    uint64_t rx_notice_id
    # quality window
    int64_t q_next
    uint64_t q_sent0
    uint64_t q_received0

cdef struct Core:
    pthread_mutex_t lock
    bint stop
    int wake_fd
    int event_fd
    int ctl_fd
    int npaths
    uint16_t ethertype
    EVP_MAC_CTX *mac        # keyed with heartbeat.key
    uint8_t node_id[NODE_ID_LEN]
    uint8_t peer_id[NODE_ID_LEN]
    int64_t interval_ns
    int64_t reply_timeout_ns  # 0: adaptive, srtt + 4 rttvar within [floor, interval]
    int64_t poll_ns
    int64_t quality_ns
    int multiplier
    int recover_count
    int window
    int rt_priority         # SCHED_FIFO priority of the loop thread; 0 = normal scheduling
    int rt_error            # errno of setting it, 0 if it took (or was not asked for)
    uint64_t seq
    int64_t next_poll
    Path paths[MAX_PATHS]
    Event events[EVENT_QUEUE]
    uint64_t ev_head
    uint64_t ev_tail
    uint64_t ev_overflow


cdef inline int64_t mono_ns() noexcept nogil:
    return hn_clock_ns(CLOCK_MONOTONIC)


cdef inline void wake(int fd) noexcept nogil:
    cdef uint64_t one = 1
    write(fd, &one, 8)


cdef inline void drain_fd(int fd) noexcept nogil:
    cdef uint64_t value
    read(fd, &value, 8)


cdef int open_path_socket(const char *ifname, uint16_t ethertype, int *ifindex) noexcept nogil:
    """A bound, group-joined AF_PACKET socket on ``ifname``, or -errno."""
    cdef sockaddr_ll addr
    cdef packet_mreq mreq
    cdef int one = 1
    cdef int err
    cdef int idx = if_nametoindex(ifname)
    if idx == 0:
        return -errno
    # Protocol 0 until bound, so no other interface's frames slip in before bind().
    cdef int fd = socket(AF_PACKET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)
    if fd < 0:
        return -errno
    memset(&addr, 0, sizeof(addr))
    addr.sll_family = AF_PACKET
    addr.sll_protocol = htons(ethertype)
    addr.sll_ifindex = idx
    memset(&mreq, 0, sizeof(mreq))
    mreq.mr_ifindex = idx
    mreq.mr_type = PACKET_MR_MULTICAST
    mreq.mr_alen = 6
    memcpy(mreq.mr_address, GROUP_MAC, 6)
    if (bind(fd, <sockaddr *>&addr, sizeof(addr)) < 0
            or setsockopt(fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mreq, sizeof(mreq)) < 0
            or setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof(one)) < 0):
        err = errno
        close(fd)
        return -err
    # Our own transmissions are not input (kernels before 4.20 lack it; receive() filters too).
    setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof(one))
    ifindex[0] = idx
    return fd


cdef void push_event(Core *c, int kind, int path, int64_t t_ns, int64_t a, int64_t b, int64_t cc,
                     int64_t d) noexcept nogil:
    cdef Event *e
    if c.ev_tail - c.ev_head >= EVENT_QUEUE:
        c.ev_overflow += 1
        return
    e = &c.events[c.ev_tail % EVENT_QUEUE]
    e.kind, e.path, e.t_ns, e.a, e.b, e.c, e.d = kind, path, t_ns, a, b, cc, d
    c.ev_tail += 1
    wake(c.event_fd)


cdef void threshold_event(Core *c, int i, int kind, int64_t t_ns, int64_t a, int64_t b, int64_t cc,
                          int64_t d) noexcept nogil:
    if not c.paths[i].paused:
        push_event(c, kind, i, t_ns, a, b, cc, d)


cdef inline void reset_window(Path *p) noexcept nogil:
    p.win_send_lag_max = 0
    p.win_recv_delay_max = 0


cdef void send_frame(Core *c, int i, int kind, int active, uint64_t seq, int64_t send_ns,
                     uint64_t echo_seq, int64_t echo_ns) noexcept nogil:
    cdef Path *p = &c.paths[i]
    cdef uint8_t buf[FRAME_LEN]
    cdef sockaddr_ll dst
    if p.fd < 0:
        p.send_errors += 1
        return
    build_frame(buf, c.mac, kind, i, active, c.node_id, seq, send_ns, echo_seq, echo_ns)
    memset(&dst, 0, sizeof(dst))
    dst.sll_family = AF_PACKET
    dst.sll_protocol = htons(c.ethertype)
    dst.sll_ifindex = p.ifindex
    dst.sll_halen = 6
    memcpy(dst.sll_addr, GROUP_MAC, 6)
    if sendto(p.fd, buf, FRAME_LEN, 0, <sockaddr *>&dst, sizeof(dst)) < 0:
        p.send_errors += 1


# --------------------------------------------------------------------------- prober logic
cdef void on_miss(Core *c, int i, int64_t now) noexcept nogil:
    cdef Path *p = &c.paths[i]
    if p.misses < 1 << 30:  # a path dead for weeks must not wrap the counter
        p.misses += 1
    p.oks = 0
    if p.misses == 1:
        p.first_miss_ns = now
    if p.misses >= c.multiplier and p.state != STATE_LOST:
        p.state = STATE_LOST
        threshold_event(c, i, EV_LOST, now, p.misses, p.first_miss_ns, p.win_send_lag_max,
                        p.win_recv_delay_max)
        reset_window(p)
    elif p.state == STATE_UP:
        p.state = STATE_SUSPECT
        threshold_event(c, i, EV_SUSPECT, now, p.misses, 0, p.win_send_lag_max, p.win_recv_delay_max)


cdef void on_reply(Core *c, int i, int64_t now, int64_t rtt) noexcept nogil:
    cdef Path *p = &c.paths[i]
    p.received += 1
    p.misses = 0
    p.oks += 1
    p.last_reply_ns = now
    p.rtt[p.rtt_n % SAMPLES] = rtt
    p.rtt_n += 1
    update_rto(p, rtt)
    if rtt > p.rtt_max:
        p.rtt_max = rtt
    if p.state == STATE_SUSPECT:
        p.state = STATE_UP
        threshold_event(c, i, EV_CLEARED, now, rtt, 0, 0, 0)
        reset_window(p)
    elif p.state == STATE_UP:
        reset_window(p)
    elif p.oks >= c.recover_count:
        p.state = STATE_UP
        threshold_event(c, i, EV_RECOVERED, now, p.oks, rtt, p.win_send_lag_max, p.win_recv_delay_max)
        reset_window(p)


cdef void update_rto(Path *p, int64_t rtt) noexcept nogil:
    cdef int64_t err
    if p.srtt == 0:
        p.srtt, p.rttvar = rtt, rtt // 2
        return
    err = rtt - p.srtt
    p.srtt += err // 8
    p.rttvar += ((err if err > 0 else -err) - p.rttvar) // 4


cdef int64_t reply_timeout(Core *c, Path *p) noexcept nogil:
    """How long the request that would be the last miss before "lost" waits for its reply.

    Earlier requests get the whole interval (a reply is matched until the next request goes), so
    a late reply or a burst of junk frames never raises a suspect. The last one gets only this:
    waiting a whole interval there too would put detection at up to (multiplier + 1) intervals
    after a fault; a timeout near the RTT brings it to multiplier intervals after the last reply
    plus the timeout, which is BFD's detection time.
    """
    cdef int64_t t = c.reply_timeout_ns
    if t == 0:
        t = p.srtt + 4 * p.rttvar if p.srtt > 0 else c.interval_ns
        if t < REPLY_TIMEOUT_FLOOR_NS:
            t = REPLY_TIMEOUT_FLOOR_NS
    return t if t < c.interval_ns else c.interval_ns


cdef void reply_overdue(Core *c, int i, int64_t now) noexcept nogil:
    """The outstanding request of path ``i`` got no reply in time: count the miss once."""
    c.paths[i].reply_deadline = 0
    on_miss(c, i, now)


cdef void tick(Core *c, int i) noexcept nogil:
    """The request deadline of path ``i`` has come: send the next request."""
    cdef Path *p = &c.paths[i]
    cdef int64_t now = mono_ns()
    cdef int64_t lag = now - p.next_send
    if p.reply_deadline:
        reply_overdue(c, i, now)
    c.seq += 1
    p.outstanding = True
    p.out_seq = c.seq
    p.out_sent_ns = mono_ns()
    if p.misses + 1 >= c.multiplier:
        p.reply_deadline = p.out_sent_ns + reply_timeout(c, p)
    else:
        p.reply_deadline = p.out_sent_ns + c.interval_ns
    send_frame(c, i, KIND_REQUEST, 0, c.seq, p.out_sent_ns, 0, 0)
    p.sent += 1
    p.lag[p.lag_n % SAMPLES] = lag
    p.lag_n += 1
    if lag > p.lag_max:
        p.lag_max = lag
    if lag > p.win_send_lag_max:
        p.win_send_lag_max = lag
    # Absolute deadlines: the next one follows this one, not the moment we woke; slots that
    # passed while the thread was starved are skipped (and show up as lag).
    p.next_send += c.interval_ns
    if p.next_send <= now:
        p.next_send += ((now - p.next_send) // c.interval_ns + 1) * c.interval_ns


cdef int replay_check(Path *p, uint64_t seq, int window) noexcept nogil:
    """FRAME_OK if ``seq`` is new within the window, else DROP_REPLAY / DROP_STALE. No change."""
    cdef uint64_t off
    if not p.rx_have or seq > p.rx_top:
        return FRAME_OK
    off = p.rx_top - seq
    if off >= <uint64_t>window:
        return DROP_STALE
    if p.rx_bits[(seq % WINDOW_BITS) // 64] & (1ULL << (seq % 64)):
        return DROP_REPLAY
    return FRAME_OK


cdef void replay_accept(Path *p, uint64_t seq) noexcept nogil:
    cdef uint64_t s, steps
    if not p.rx_have:
        memset(p.rx_bits, 0, sizeof(p.rx_bits))
        p.rx_have = True
        p.rx_top = seq
    elif seq > p.rx_top:
        # Bits index sequence numbers modulo WINDOW_BITS: clear the slots the window moves over.
        steps = seq - p.rx_top
        if steps >= WINDOW_BITS:
            memset(p.rx_bits, 0, sizeof(p.rx_bits))
        else:
            s = p.rx_top + 1
            while s <= seq:
                p.rx_bits[(s % WINDOW_BITS) // 64] &= ~(1ULL << (s % 64))
                s += 1
        p.rx_top = seq
    p.rx_bits[(seq % WINDOW_BITS) // 64] |= 1ULL << (seq % 64)


cdef void on_frame(Core *c, int i, const uint8_t *buf, ssize_t n, sockaddr_ll *frm,
                   int64_t recv_delay) noexcept nogil:
    cdef Path *p = &c.paths[i]
    cdef Parsed f
    cdef int code = parse_frame(c.mac, buf, n, &f)
    cdef int64_t now
    if code == FRAME_OK and memcmp(f.node_id, c.peer_id, NODE_ID_LEN) != 0:
        code = DROP_NODE
    if code == FRAME_OK and f.path != i:
        code = DROP_PATH
    if code == FRAME_OK and p.check_peer_mac and (frm.sll_halen != 6 or memcmp(frm.sll_addr, p.peer_mac, 6) != 0):
        code = DROP_SRC_MAC
    if code == FRAME_OK:
        code = replay_check(p, f.seq, c.window)
    if code != FRAME_OK:
        p.drops[code] += 1
        return
    replay_accept(p, f.seq)
    if recv_delay > p.win_recv_delay_max:
        p.win_recv_delay_max = recv_delay
    if f.kind == KIND_REQUEST:
        c.seq += 1
        send_frame(c, i, KIND_REPLY, 0, c.seq, mono_ns(), f.seq, f.send_ns)
        p.answered += 1
    elif f.kind == KIND_REPLY:
        if p.outstanding and f.echo_seq == p.out_seq:
            p.outstanding = False
            p.reply_deadline = 0
            now = mono_ns()
            on_reply(c, i, now, now - p.out_sent_ns)
        else:
            p.drops[DROP_LATE] += 1
    elif not p.rx_notice_have or f.echo_seq != p.rx_notice_id:
        # Each copy of a notice has its own seq; the notice id (echo_seq) tells copies apart.
        p.rx_notice_have = True
        p.rx_notice_id = f.echo_seq
        p.notices_received += 1
        push_event(c, EV_NOTICE, i, mono_ns(), f.active, <int64_t>f.echo_seq, 0, 0)


cdef void receive(Core *c, int i) noexcept nogil:
    cdef hn_datagram batch[HN_BATCH]
    cdef hn_datagram *d
    cdef int64_t delay
    cdef int k, j, got
    for k in range(RECV_BATCHES):
        # A short batch means the queue is empty; a pending socket error (ENETDOWN) is cleared by
        # reading it.
        got = hn_recv_batch(c.paths[i].fd, batch)
        for j in range(got):
            d = &batch[j]
            if d.frm.sll_pkttype == PACKET_OUTGOING:
                continue
            delay = hn_clock_ns(CLOCK_REALTIME) - d.rx_realtime_ns if d.rx_realtime_ns > 0 else 0
            on_frame(c, i, d.data, d.len, &d.frm, delay if delay > 0 else 0)
        if got < HN_BATCH:
            return


cdef void poll_carrier(Core *c, int64_t now) noexcept nogil:
    cdef int i, bit
    cdef Path *p
    for i in range(c.npaths):
        p = &c.paths[i]
        bit = hn_carrier(c.ctl_fd, p.ifname)
        if bit == -ENODEV:
            bit = 0  # the interface is gone: no carrier until it returns and is rebound
        if bit < 0 or bit == p.carrier:
            continue
        p.carrier = bit
        push_event(c, EV_LINK_UP if bit else EV_LINK_DOWN, i, now, 0, 0, 0, 0)


cdef int cmp_i64(const void *a, const void *b) noexcept nogil:
    cdef int64_t x = (<const int64_t *>a)[0], y = (<const int64_t *>b)[0]
    return (x > y) - (x < y)


cdef void quality_window(Core *c, int i, int64_t now) noexcept nogil:
    cdef Path *p = &c.paths[i]
    cdef uint64_t sent = p.sent - p.q_sent0
    cdef uint64_t got = p.received - p.q_received0
    cdef uint64_t k, n = got if got < SAMPLES else SAMPLES
    cdef int64_t loss_ppm = 0, p50 = 0, p99 = 0
    cdef int64_t *tmp
    if sent > 0 and sent > got:
        loss_ppm = <int64_t>((sent - got) * 1000000 // sent)
    if n > 0:
        tmp = <int64_t *>malloc(n * sizeof(int64_t))
        if tmp != NULL:
            for k in range(n):
                tmp[k] = p.rtt[(p.rtt_n - n + k) % SAMPLES]
            qsort(tmp, n, sizeof(int64_t), cmp_i64)
            p50 = tmp[(n - 1) // 2]
            p99 = tmp[(n - 1) * 99 // 100]
            free(tmp)
    push_event(c, EV_QUALITY, i, now, loss_ppm, p50, p99, 0)
    p.q_sent0, p.q_received0 = p.sent, p.received
    p.q_next += c.quality_ns
    if p.q_next <= now:
        p.q_next = now + c.quality_ns


cdef int64_t service(Core *c) noexcept nogil:
    """Run every deadline that has come; return the next one."""
    cdef int64_t now = mono_ns()
    cdef int64_t nxt
    cdef int i
    cdef Path *p
    if now >= c.next_poll:
        poll_carrier(c, now)
        c.next_poll += c.poll_ns
        if c.next_poll <= now:
            c.next_poll += ((now - c.next_poll) // c.poll_ns + 1) * c.poll_ns
    nxt = c.next_poll
    for i in range(c.npaths):
        p = &c.paths[i]
        if p.reply_deadline and now >= p.reply_deadline:
            reply_overdue(c, i, now)
        if now >= p.next_send:
            tick(c, i)
        if p.notice_left > 0 and now >= p.notice_next:
            c.seq += 1
            send_frame(c, i, KIND_NOTICE, p.notice_active, c.seq, mono_ns(), p.notice_id, 0)
            p.notices_sent += 1
            p.notice_left -= 1
            p.notice_next += NOTICE_GAP_NS
        if c.quality_ns > 0 and now >= p.q_next:
            quality_window(c, i, now)
        if p.next_send < nxt:
            nxt = p.next_send
        if p.reply_deadline and p.reply_deadline < nxt:
            nxt = p.reply_deadline
        if p.notice_left > 0 and p.notice_next < nxt:
            nxt = p.notice_next
        if c.quality_ns > 0 and p.q_next < nxt:
            nxt = p.q_next
    return nxt


cdef void run_loop(Core *c) noexcept nogil:
    cdef pollfd fds[1 + MAX_PATHS]
    cdef int owner[1 + MAX_PATHS]
    cdef int i, n, rc
    cdef int64_t now, deadline
    # The default 50 us timer slack would be most of our lateness budget at 1 ms periods.
    prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)
    if c.rt_priority > 0:
        c.rt_error = hn_realtime(c.rt_priority)
    pthread_mutex_lock(&c.lock)
    now = mono_ns()
    c.next_poll = now
    for i in range(c.npaths):
        c.paths[i].next_send = now
        c.paths[i].q_next = now + c.quality_ns
    while not c.stop:
        deadline = service(c)
        n = 0
        fds[n].fd, fds[n].events, fds[n].revents, owner[n] = c.wake_fd, POLLIN, 0, -1
        n += 1
        for i in range(c.npaths):
            if c.paths[i].fd >= 0:
                fds[n].fd, fds[n].events, fds[n].revents, owner[n] = c.paths[i].fd, POLLIN, 0, i
                n += 1
        pthread_mutex_unlock(&c.lock)
        rc = hn_wait(fds, n, deadline)
        pthread_mutex_lock(&c.lock)
        if rc <= 0:
            continue
        for i in range(n):
            if fds[i].revents == 0:
                continue
            if owner[i] == -1:
                drain_fd(fds[i].fd)
            elif c.paths[owner[i]].fd == fds[i].fd:  # not swapped by rebind() meanwhile
                receive(c, owner[i])
    pthread_mutex_unlock(&c.lock)


# --------------------------------------------------------------------------- Python face
def sleep_lateness(double period_ms, int count, int rt_priority=0):
    """The host's timer floor: lateness (ns) of ``count`` bare clock_nanosleep() wake-ups on
    absolute deadlines, in the calling thread with 1 us timer slack like the probe loop (and
    SCHED_FIFO at ``rt_priority`` if > 0); both are restored after. What the probe loop adds on
    top of this is its own cost."""
    cdef int64_t *out = <int64_t *>malloc(count * sizeof(int64_t))
    cdef int rt_error = 0
    cdef int slack = prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0)
    if out == NULL:
        raise MemoryError()
    try:
        with nogil:
            prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)
            if rt_priority > 0:
                rt_error = hn_realtime(rt_priority)
            hn_sleep_lateness(<int64_t>(period_ms * 1e6), count, out)
            if rt_priority > 0 and rt_error == 0:
                hn_normal_priority()
            prctl(PR_SET_TIMERSLACK, slack, 0, 0, 0)
        if rt_error:
            raise OSError(rt_error, f"SCHED_FIFO: {strerror(rt_error).decode()}")
        return [out[i] for i in range(count)]
    finally:
        free(out)



cdef bytes _id_field(str node_id):
    raw = node_id.encode("utf-8")
    if len(raw) > NODE_ID_LEN:
        raise ValueError(f"node id {node_id!r} is longer than {NODE_ID_LEN} bytes")
    return raw.ljust(NODE_ID_LEN, b"\0")


cdef class Engine:
    """The probe loop's state and its Python controls; hanet.probe.Prober is the API to use."""
    cdef Core *c
    cdef bint opened
    cdef object names

    def __cinit__(self, *, str node_id, str peer_id, bytes key, paths, double interval_ms,
                  int multiplier, int recover_count, int ethertype, int replay_window,
                  double poll_interval_ms, double quality_window_ms=0.0, int rt_priority=0,
                  double reply_timeout_ms=0.0, unsigned long long seq_start=0):
        cdef int i
        if not 1 <= len(paths) <= MAX_PATHS:
            raise ValueError(f"between 1 and {MAX_PATHS} paths are supported")
        if not 1 <= replay_window <= WINDOW_BITS:
            raise ValueError(f"replay_window must be 1 to {WINDOW_BITS}")
        self.c = <Core *>calloc(1, sizeof(Core))
        if self.c == NULL:
            raise MemoryError()
        pthread_mutex_init(&self.c.lock, NULL)
        self.c.wake_fd = self.c.event_fd = self.c.ctl_fd = -1
        self.c.mac = keyed_mac(key)
        cdef bytes own = _id_field(node_id), peer = _id_field(peer_id)
        memcpy(self.c.node_id, <const char *>own, NODE_ID_LEN)
        memcpy(self.c.peer_id, <const char *>peer, NODE_ID_LEN)
        self.c.npaths = len(paths)
        self.c.ethertype = ethertype
        self.c.interval_ns = <int64_t>(interval_ms * 1e6)
        self.c.reply_timeout_ns = <int64_t>(reply_timeout_ms * 1e6)
        self.c.poll_ns = <int64_t>(poll_interval_ms * 1e6)
        self.c.quality_ns = <int64_t>(quality_window_ms * 1e6)
        self.c.multiplier = multiplier
        self.c.recover_count = recover_count
        self.c.window = replay_window
        self.c.rt_priority = rt_priority
        # Sequence numbers start at wall-clock ns, so a restarted node's frames are newer than
        # anything its peer saw from it before; the daemon passes a start that also survives the
        # wall clock stepping back (hanet.seqfloor).
        self.c.seq = seq_start if seq_start > 0 else <uint64_t>hn_clock_ns(CLOCK_REALTIME)
        self.names = []
        for i, (ifname, peer_mac) in enumerate(paths):
            raw = ifname.encode()
            if not 0 < len(raw) < 16:
                raise ValueError(f"bad interface name {ifname!r}")
            self.names.append(ifname)
            strncpy(self.c.paths[i].ifname, raw, 15)
            self.c.paths[i].fd = -1
            self.c.paths[i].carrier = -1
            if peer_mac:
                mac = bytes.fromhex(peer_mac.replace(":", ""))
                if len(mac) != 6:
                    raise ValueError(f"bad peer MAC {peer_mac!r}")
                memcpy(self.c.paths[i].peer_mac, <const char *>mac, 6)
                self.c.paths[i].check_peer_mac = True

    def __dealloc__(self):
        if self.c != NULL:
            self.close()
            pthread_mutex_destroy(&self.c.lock)
            if self.c.mac != NULL:
                EVP_MAC_CTX_free(self.c.mac)
            free(self.c)
            self.c = NULL

    def open(self):
        """Open every socket and read the carriers; raise OSError (and close all) on failure."""
        cdef int i, fd, idx, err
        if self.opened:
            return
        self.c.stop = False
        try:
            self.c.wake_fd = self._check(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC), "eventfd")
            self.c.event_fd = self._check(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC), "eventfd")
            self.c.ctl_fd = self._check(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), "socket")
            for i in range(self.c.npaths):
                fd = open_path_socket(self.c.paths[i].ifname, self.c.ethertype, &idx)
                if fd < 0:
                    raise OSError(-fd, f"path[{i}] {self.names[i]}: cannot open AF_PACKET socket: "
                                       f"{strerror(-fd).decode()}")
                self.c.paths[i].fd, self.c.paths[i].ifindex = fd, idx
                err = hn_carrier(self.c.ctl_fd, self.c.paths[i].ifname)
                self.c.paths[i].carrier = 1 if err == 1 else 0
        except OSError:
            self.close()
            raise
        self.opened = True

    cdef int _check(self, int rc, str what) except -1:
        if rc < 0:
            raise OSError(errno, f"{what}: {strerror(errno).decode()}")
        return rc

    def close(self):
        cdef int i
        for i in range(self.c.npaths):
            if self.c.paths[i].fd >= 0:
                close(self.c.paths[i].fd)
                self.c.paths[i].fd = -1
        for fd in (self.c.wake_fd, self.c.event_fd, self.c.ctl_fd):
            if fd >= 0:
                close(fd)
        self.c.wake_fd = self.c.event_fd = self.c.ctl_fd = -1
        self.opened = False

    def run(self):
        """The probe loop; returns after stop(). Runs without the GIL."""
        with nogil:
            run_loop(self.c)

    def stop(self):
        pthread_mutex_lock(&self.c.lock)
        self.c.stop = True
        pthread_mutex_unlock(&self.c.lock)
        if self.c.wake_fd >= 0:
            wake(self.c.wake_fd)

    def realtime_error(self):
        """errno of switching the loop thread to SCHED_FIFO (0: done, or not asked for)."""
        return self.c.rt_error

    def event_fileno(self):
        return self.c.event_fd

    def drain(self):
        """Queued events as tuples (kind, path, t_ns, a, b, c, d), oldest first."""
        cdef Event *e
        cdef list out = []
        drain_fd(self.c.event_fd)
        pthread_mutex_lock(&self.c.lock)
        while self.c.ev_head != self.c.ev_tail:
            e = &self.c.events[self.c.ev_head % EVENT_QUEUE]
            out.append((e.kind, e.path, e.t_ns, e.a, e.b, e.c, e.d))
            self.c.ev_head += 1
        pthread_mutex_unlock(&self.c.lock)
        return out

    def overflow(self):
        return self.c.ev_overflow

    def _path(self, int i):
        if not 0 <= i < self.c.npaths:
            raise IndexError(f"no path {i}")

    def pause(self, int i):
        self._path(i)
        pthread_mutex_lock(&self.c.lock)
        self.c.paths[i].paused = True
        pthread_mutex_unlock(&self.c.lock)

    def resume(self, int i):
        """Events again, judged from fresh counters: the path is unknown until proven either way."""
        cdef Path *p
        self._path(i)
        pthread_mutex_lock(&self.c.lock)
        p = &self.c.paths[i]
        p.paused = False
        p.state = STATE_UNKNOWN
        p.misses = p.oks = 0
        reset_window(p)
        pthread_mutex_unlock(&self.c.lock)

    def send_notice(self, int i, int active):
        self._path(i)
        if not 0 <= active < 256:
            raise ValueError(f"active path {active} out of range")
        pthread_mutex_lock(&self.c.lock)
        p = &self.c.paths[i]
        self.c.seq += 1
        p.notice_id = self.c.seq
        p.notice_active = active
        p.notice_left = NOTICE_COPIES
        p.notice_next = mono_ns()
        pthread_mutex_unlock(&self.c.lock)
        wake(self.c.wake_fd)

    def rebind(self, int i):
        """Reopen path ``i``'s socket by interface name (it may have a new ifindex)."""
        cdef int fd, idx, old
        self._path(i)
        fd = open_path_socket(self.c.paths[i].ifname, self.c.ethertype, &idx)
        if fd < 0:
            raise OSError(-fd, f"path[{i}] {self.names[i]}: cannot reopen AF_PACKET socket: "
                               f"{strerror(-fd).decode()}")
        pthread_mutex_lock(&self.c.lock)
        old = self.c.paths[i].fd
        self.c.paths[i].fd, self.c.paths[i].ifindex = fd, idx
        pthread_mutex_unlock(&self.c.lock)
        if old >= 0:
            close(old)
        wake(self.c.wake_fd)
        return idx

    def carrier(self, int i):
        self._path(i)
        return self.c.paths[i].carrier == 1

    def poll_carrier_now(self):
        """Read every path's carrier bit now, on the calling thread, ahead of the loop's next
        poll; changes are queued as link events like the loop's own."""
        with nogil:
            pthread_mutex_lock(&self.c.lock)
            if self.c.ctl_fd >= 0:
                poll_carrier(self.c, mono_ns())
            pthread_mutex_unlock(&self.c.lock)

    def snapshot(self, int i):
        """Counters and sample rings (oldest first) of path ``i``.

        The path is copied under the lock and turned into Python objects after it is released:
        building lists of thousands of samples under the lock would stall the probe loop (and
        show up as late replies).
        """
        cdef Path *copy
        cdef uint64_t k, n_rtt, n_lag
        cdef int64_t timeout
        cdef Path *p
        self._path(i)
        copy = <Path *>malloc(sizeof(Path))
        if copy == NULL:
            raise MemoryError()
        try:
            with nogil:
                pthread_mutex_lock(&self.c.lock)
                memcpy(copy, &self.c.paths[i], sizeof(Path))
                timeout = reply_timeout(self.c, copy)
                pthread_mutex_unlock(&self.c.lock)
            p = copy
            n_rtt = p.rtt_n if p.rtt_n < SAMPLES else SAMPLES
            n_lag = p.lag_n if p.lag_n < SAMPLES else SAMPLES
            return {
                "interface": self.names[i], "ifindex": p.ifindex, "state": STATES[p.state],
                "paused": bool(p.paused), "sent": p.sent, "received": p.received,
                "answered": p.answered, "send_errors": p.send_errors,
                "notices_sent": p.notices_sent, "notices_received": p.notices_received,
                "drops": {DROP_REASONS[k]: p.drops[k] for k in range(N_DROPS) if p.drops[k]},
                "carrier": p.carrier == 1, "last_reply_ns": p.last_reply_ns,
                "rtt_max_ns": p.rtt_max, "send_lag_max_ns": p.lag_max, "reply_timeout_ns": timeout,
                "rtt_samples": [p.rtt[(p.rtt_n - n_rtt + k) % SAMPLES] for k in range(n_rtt)],
                "lag_samples": [p.lag[(p.lag_n - n_lag + k) % SAMPLES] for k in range(n_lag)],
            }
        finally:
            free(copy)

# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# distutils: libraries = crypto
"""Heartbeat hot path: AF_PACKET sockets, frame codec, HMAC check and the probe loop without the GIL.

One thread serves every path. It sends requests on absolute CLOCK_MONOTONIC deadlines (each
ppoll() waits until the next deadline, so periods never drift), answers the peer's requests,
matches replies, watches each path's carrier through the kernel's lock-free carrier counters, and
queues only threshold events for Python (hanet.model events), signalled through an eventfd.

A path is made of named parts, each a struct below: its socket (``PathSocket``), its session
with the peer (``Session``: misses, suspect, lost, recovered), the replay window over the peer's
sequence numbers (``ReplayWindow``), its counters (``Counters``) and its sample rings
(``Samples``). hanet/session.py is the same session logic in pure Python; one test suite runs
against both (through ``SessionModel`` here).

All shared state sits in one ``Core`` behind one mutex; the loop holds it except while it waits
in ppoll() or reads a carrier through the kernel's locked ioctl, so Python's calls see a
consistent snapshot and never wait longer than one loop pass.

What a flood of frames costs is bounded four ways: a socket filter in the kernel lets through
only frames that could be the peer's (hn_attach_filter in _fastprobe.h); frames that pass are
read in place from a receive ring shared with the kernel (no system call per frame); the free
checks come before the HMAC; and each pass reads a bounded number of frames a socket before the
deadlines are served again, a pass that dropped frames making the next one wait COALESCE_NS so
that a flood costs a wake-up per batch rather than per frame.

The C helpers are in hanet/_fastprobe.h; the frame layout and its constants in hanet/wire.py.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.string cimport memcpy, memset, memcmp, strncpy
from libc.stdlib cimport calloc, free, malloc

import math

from hanet import model, wire
from hanet.frame import Frame

cdef extern from "_fastprobe.h" nogil:
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

    enum:
        HN_VERSION
        HN_KIND_REQUEST
        HN_KIND_REPLY
        HN_KIND_NOTICE
        HN_REQUEST_CONFIRM
        HN_REQUEST_PROBE
        HN_REQUEST_ECHO
        HN_NODE_ID_LEN
        HN_MAC_LEN
        HN_BODY_LEN
        HN_FRAME_LEN
        HN_OFF_KIND
        HN_OFF_PATH
        HN_OFF_ACTIVE
        HN_OFF_NODE_ID
        HN_OFF_SEQ
        HN_OFF_SEND_NS
        HN_OFF_ECHO_SEQ
        HN_OFF_ECHO_NS
        HN_BATCH

    ctypedef struct hn_ring:
        uint8_t *map

    ctypedef struct hn_datagram:
        unsigned char data[128]
        sockaddr_ll frm "from"
        int64_t rx_realtime_ns
        ssize_t len

    EVP_MAC_CTX *hn_mac_new(const unsigned char *key, size_t key_len)
    int hn_mac(EVP_MAC_CTX *ctx, const unsigned char *data, size_t n, unsigned char *out, size_t out_len)
    int64_t hn_clock_ns(clockid_t clock)
    int hn_wait(pollfd *fds, int n, int64_t deadline_ns)
    int hn_realtime(int priority)
    int hn_filtered_socket(int ifindex, uint16_t ethertype, const uint8_t *peer_id,
                           const uint8_t (*macs)[6], int nmacs, int invert, hn_ring *ring,
                           int ring_bytes)
    int hn_open_filter_counter(int ifindex, uint16_t ethertype, const uint8_t *peer_id,
                               const uint8_t (*macs)[6], int nmacs)
    int hn_set_rcvbuf(int fd, int nbytes)
    int hn_packet_stats(int fd, uint64_t *packets, uint64_t *drops)
    int hn_recv_batch(int fd, hn_datagram *d, int maxn)
    int hn_ring_open(int fd, hn_ring *r, int nbytes)
    void hn_ring_close(hn_ring *r)
    int hn_ring_next(hn_ring *r, const uint8_t **data, ssize_t *len, sockaddr_ll **frm,
                     int64_t *rx_realtime_ns)
    void hn_ring_done(hn_ring *r)
    int hn_clear_error(int fd)
    int hn_carrier_ioctl(int fd, const char *ifname)
    int hn_sysfs_open(const char *ifname, int ifindex, int fds[3])
    int hn_carrier_counters(const int fds[3])

    int errno
    int ENODEV
    clockid_t CLOCK_MONOTONIC, CLOCK_REALTIME
    short POLLIN, POLLERR
    int AF_INET, SOCK_DGRAM, SOCK_CLOEXEC
    int SOL_SOCKET, SO_TIMESTAMPNS, SOL_PACKET, PACKET_ADD_MEMBERSHIP, PACKET_MR_MULTICAST
    int AF_PACKET, PACKET_OUTGOING
    int EFD_NONBLOCK, EFD_CLOEXEC
    int PR_SET_TIMERSLACK

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
    int setsockopt(int fd, int level, int name, const void *value, socklen_t len)
    ssize_t sendto(int fd, const void *buf, size_t n, int flags, const sockaddr *addr, socklen_t len)
    uint16_t htons(uint16_t v)
    unsigned int if_nametoindex(const char *name)
    char *strerror(int errnum)
    void qsort(void *base, size_t n, size_t size, int (*cmp)(const void *, const void *) noexcept nogil)
    void EVP_MAC_CTX_free(EVP_MAC_CTX *ctx)
    int CRYPTO_memcmp(const void *a, const void *b, size_t n)


# --------------------------------------------------------------------------- frame codec
cdef enum:
    VERSION = HN_VERSION
    KIND_REQUEST = HN_KIND_REQUEST
    KIND_REPLY = HN_KIND_REPLY
    KIND_NOTICE = HN_KIND_NOTICE
    REQUEST_CONFIRM = HN_REQUEST_CONFIRM
    REQUEST_PROBE = HN_REQUEST_PROBE
    REQUEST_ECHO = HN_REQUEST_ECHO
    NODE_ID_LEN = HN_NODE_ID_LEN
    MAC_LEN = HN_MAC_LEN
    BODY_LEN = HN_BODY_LEN
    FRAME_LEN = HN_FRAME_LEN

# Drop reasons, in counter order (hanet.wire.DROP_REASONS). The first five come from the
# stateless decode.
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
    DROP_UNHEARD
    DROP_OUTDATED
    N_DROPS
    FRAME_OK = -1

DROP_REASONS = wire.DROP_REASONS


def _check_constants():
    """The C side must speak hanet.wire's frame: refuse to load otherwise."""
    ours = {"VERSION": VERSION, "KIND_REQUEST": KIND_REQUEST, "KIND_REPLY": KIND_REPLY,
            "KIND_NOTICE": KIND_NOTICE, "NODE_ID_LEN": NODE_ID_LEN, "MAC_LEN": MAC_LEN,
            "BODY_LEN": BODY_LEN, "FRAME_LEN": FRAME_LEN, "OFF_KIND": HN_OFF_KIND,
            "OFF_PATH": HN_OFF_PATH, "OFF_ACTIVE": HN_OFF_ACTIVE, "OFF_NODE_ID": HN_OFF_NODE_ID,
            "OFF_SEQ": HN_OFF_SEQ, "OFF_SEND_NS": HN_OFF_SEND_NS, "OFF_ECHO_SEQ": HN_OFF_ECHO_SEQ,
            "OFF_ECHO_NS": HN_OFF_ECHO_NS, "REQUEST_CONFIRM": REQUEST_CONFIRM,
            "REQUEST_PROBE": REQUEST_PROBE, "REQUEST_ECHO": REQUEST_ECHO}
    wrong = {k: v for k, v in ours.items() if getattr(wire, k) != v}
    if wrong or len(wire.DROP_REASONS) != N_DROPS:
        raise ImportError(f"hanet._fastprobe was built for another frame layout: {wrong}")


_check_constants()

cdef uint8_t GROUP_MAC[6]
GROUP_MAC[:] = list(wire.GROUP_MAC)

cdef struct Parsed:
    int kind
    int path
    int active
    uint8_t node_id[NODE_ID_LEN]
    uint64_t seq
    uint64_t send_ns
    uint64_t echo_seq
    uint64_t echo_ns


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
                      const uint8_t *node_id, uint64_t seq, uint64_t send_ns, uint64_t echo_seq,
                      uint64_t echo_ns) noexcept nogil:
    out[0] = VERSION
    out[HN_OFF_KIND] = <uint8_t>kind
    out[HN_OFF_PATH] = <uint8_t>path
    out[HN_OFF_ACTIVE] = <uint8_t>active
    memcpy(out + HN_OFF_NODE_ID, node_id, NODE_ID_LEN)
    put_u64(out + HN_OFF_SEQ, seq)
    put_u64(out + HN_OFF_SEND_NS, send_ns)
    put_u64(out + HN_OFF_ECHO_SEQ, echo_seq)
    put_u64(out + HN_OFF_ECHO_NS, echo_ns)
    if not hn_mac(mac, out, BODY_LEN, out + BODY_LEN, MAC_LEN):
        memset(out + BODY_LEN, 0, MAC_LEN)  # cannot happen with a working libcrypto; peer drops it


cdef int check_shape(const uint8_t *data, ssize_t n) noexcept nogil:
    """The free checks of the stateless decode: length, version, kind."""
    if n < 1:
        return DROP_SHORT
    if data[0] != VERSION:
        return DROP_VERSION
    if n < FRAME_LEN:
        return DROP_SHORT
    if n > FRAME_LEN:
        return DROP_LONG
    if data[HN_OFF_KIND] < KIND_REQUEST or data[HN_OFF_KIND] > KIND_NOTICE:
        return DROP_KIND
    return FRAME_OK


cdef inline bint authentic(EVP_MAC_CTX *mac, const uint8_t *data) noexcept nogil:
    cdef uint8_t expect[MAC_LEN]
    return hn_mac(mac, data, BODY_LEN, expect, MAC_LEN) and CRYPTO_memcmp(expect, data + BODY_LEN, MAC_LEN) == 0


cdef void read_fields(const uint8_t *data, Parsed *f) noexcept nogil:
    f.kind = data[HN_OFF_KIND]
    f.path = data[HN_OFF_PATH]
    f.active = data[HN_OFF_ACTIVE]
    memcpy(f.node_id, data + HN_OFF_NODE_ID, NODE_ID_LEN)
    f.seq = get_u64(data + HN_OFF_SEQ)
    f.send_ns = get_u64(data + HN_OFF_SEND_NS)
    f.echo_seq = get_u64(data + HN_OFF_ECHO_SEQ)
    f.echo_ns = get_u64(data + HN_OFF_ECHO_NS)


cdef int parse_frame(EVP_MAC_CTX *mac, const uint8_t *data, ssize_t n, Parsed *f) noexcept nogil:
    """FRAME_OK with ``f`` filled, or the drop reason. Authenticates before reading any field."""
    cdef int code = check_shape(data, n)
    if code != FRAME_OK:
        return code
    if not authentic(mac, data):
        return DROP_AUTH
    read_fields(data, f)
    return FRAME_OK


cdef EVP_MAC_CTX *keyed_mac(bytes key) except NULL:
    cdef EVP_MAC_CTX *mac = hn_mac_new(key, len(key))
    if mac == NULL:
        raise ValueError("libcrypto refused the HMAC-SHA256 key")
    return mac


def _field(frame, str name, object top):
    value = getattr(frame, name)
    if not isinstance(value, int) or not 0 <= value <= top:
        raise ValueError(f"{name} {value!r} is not 0..{top}")
    return value


def encode(bytes key, frame):
    """The frame's bytes (same contract as hanet.frame.encode: ValueError for a field out of range)."""
    cdef uint8_t out[FRAME_LEN]
    cdef bytes node_id = frame.node_id
    cdef int kind = _field(frame, "kind", wire.U8_MAX), path = _field(frame, "path", wire.U8_MAX)
    cdef int active = _field(frame, "active", wire.U8_MAX)
    cdef uint64_t seq = _field(frame, "seq", wire.U64_MAX)
    cdef uint64_t send_ns = _field(frame, "send_ns", wire.U64_MAX)
    cdef uint64_t echo_seq = _field(frame, "echo_seq", wire.U64_MAX)
    cdef uint64_t echo_ns = _field(frame, "echo_ns", wire.U64_MAX)
    if len(node_id) != NODE_ID_LEN:
        raise ValueError(f"node_id must be {NODE_ID_LEN} bytes")
    cdef EVP_MAC_CTX *mac = keyed_mac(key)
    build_frame(out, mac, kind, path, active, node_id, seq, send_ns, echo_seq, echo_ns)
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
    EVENT_QUEUE = 4096      # threshold events waiting for drain()
    WINDOW_BITS = 1024      # replay window bitmap; config caps heartbeat.replay_window here
    WINDOW_WORDS = 16
    RECV_BUDGET = 64        # frames read from one socket per loop pass: the deadlines come first
    RING_BUDGET = 512       # the same from a receive ring, where a frame costs no system call
    BUSY_FRAMES = 16        # a pass that read this many frames, or dropped any, makes the next
    COALESCE_NS = 100000    # wait this long before reading: under a flood, one wake-up reads a
                            # batch, not one frame (genuine traffic is a few frames an interval)
    NOTICE_COPIES = 3
    NOTICE_GAP_NS = 2000000
    REPLY_TIMEOUT_FLOOR_NS = 250000   # the adaptive reply timeout never goes below 250 us
    CONFIRM_RING = 16       # requests of a suspicion whose late replies still clear it
    CONFIRM_QUESTIONS = 8   # a suspicion asks at least this often within its window (confirm_wait)
    RTT_PEAK_DECAY = 16     # the RTT peak loses 1/16 a reply: a lone slow answer counts ~16 replies
    CARRIER_NONE = 0
    CARRIER_COUNTERS = 1    # lock-free sysfs counters, read in the loop
    CARRIER_IOCTL = 2       # ETHTOOL_GLINK (RTNL), read outside the core lock

# Sequence numbers never wrap: below SEQ_LOW_MARK left the prober raises an alarm once, and at
# the end of the space it stops sending rather than reuse a number.
cdef uint64_t SEQ_MAX = 0xFFFFFFFFFFFFFFFFULL
cdef uint64_t SEQ_LOW_MARK = 1ULL << 32

STATES = ("unknown", "up", "suspect", "lost")
CARRIER_SOURCES = ("none", "counters", "ioctl")

cdef enum:
    STATE_UNKNOWN = 0
    STATE_UP
    STATE_SUSPECT
    STATE_LOST

cdef enum EventKind:
    EV_SUSPECT = 1
    EV_LOST
    EV_CLEARED
    EV_RECOVERED
    EV_LINK_DOWN
    EV_LINK_UP
    EV_NOTICE
    EV_QUALITY
    EV_CROSSED
    EV_SEQ_LOW

cdef struct Event:
    int kind
    int path
    int64_t t_ns
    int64_t misses
    int64_t first_miss_ns
    int64_t send_lag_max_ns
    int64_t recv_delay_max_ns
    int64_t rtt_ns
    int64_t replies
    int64_t active
    uint64_t peer_seq
    bint crossed
    int64_t loss_ppm
    int64_t rtt_p50_ns
    int64_t rtt_p99_ns
    int64_t peer_path
    uint64_t remaining
    int64_t confirms_sent
    int64_t confirms_answered
    int64_t confirm_first_ns
    int64_t judged_ns
    int64_t witnessed_ns

cdef struct PathSocket:
    int fd                  # the path's filtered AF_PACKET socket; -1 while the NIC is gone
    hn_ring ring            # its receive ring (map NULL: read with recvmmsg instead)
    int count_fd            # the socket that counts what the filter refuses (never read)
    int ifindex
    char ifname[16]
    int sysfs[3]            # carrier_up_count, carrier_down_count, flags; -1 when not open
    int carrier_source      # CARRIER_COUNTERS, CARRIER_IOCTL, or CARRIER_NONE while the NIC is missing
    int carrier             # last carrier bit read

cdef struct Sent:
    uint64_t seq
    int64_t ns
    bint confirm

cdef struct Session:
    int state
    int misses
    int oks
    bint paused
    bint heard              # a reply to a request of this run has arrived
    int peer_path           # the peer's path byte last heard here; -1 before any
    int64_t first_miss_ns
    bint outstanding        # a reply to out_seq is still accepted (until the next request)
    bint confirming         # out_seq is a confirmation request (heartbeat.confirm_ms)
    uint64_t out_seq
    int64_t out_sent_ns
    int64_t reply_deadline  # when out_seq's miss counts; 0 once it is answered or counted
    int64_t srtt            # smoothed RTT and its mean deviation (RFC 6298), for the auto timeout
    int64_t rttvar
    int64_t rtt_peak        # the longest recent RTT, decaying by 1/RTT_PEAK_DECAY a reply (confirm_window)
    bint suspecting         # confirmation probing: a reply is overdue, confirmations go
    bint told               # the suspect event went out: a miss without confirmation probing,
                            # with it once a confirmation too went unanswered
    int64_t confirm_first_ns    # when the first reply of this suspicion was overdue
    int64_t judged_ns           # when the window passed with every question unanswered (0: not yet)
    int64_t witnessed_ns        # when the peer was first heard on another path after that
    int64_t confirms_sent
    int64_t confirms_unanswered
    bint have_pinned
    Sent pinned             # the request first overdue: its late reply still clears
    Sent recent[CONFIRM_RING]   # the last requests of the suspicion, likewise
    int nrecent
    uint64_t peer_sent_ns   # the peer's send time of its last scheduled request here; 0: none
    int64_t peer_deadline   # when the peer's next scheduled request is overdue; 0: not expected
    int64_t peer_heard_ns   # when its last scheduled request arrived here
    int64_t peer_jitter     # mean deviation of its scheduled requests' arrivals from the schedule
                            # (RFC 6298's rttvar for the peer's timer and the path)
    int64_t peer_frame_ns   # when its last authenticated frame of any kind arrived here
    bint peer_doubts        # the peer's confirmation is why peer_deadline is now
    bint echoing            # this suspicion began on the peer's confirmation and no question of
                            # ours has gone unanswered yet: ours go as echoes (REQUEST_ECHO)
    int64_t win_send_lag_max    # lag maxima since the last reply in steady state or last event
    int64_t win_recv_delay_max

cdef struct ReplayWindow:
    bint have
    uint64_t top
    uint64_t bits[WINDOW_WORDS]

cdef struct Counters:
    uint64_t sent
    uint64_t received
    uint64_t answered
    uint64_t send_errors
    uint64_t notices_sent
    uint64_t notices_received
    uint64_t drops[N_DROPS]
    uint64_t filtered           # refused by the kernel filter (counting socket)
    uint64_t taken              # passed the kernel filter (PACKET_STATISTICS of the path socket)
    uint64_t overflow           # passed the filter but found the receive buffer full
    uint64_t carrier_reads
    uint64_t carrier_ioctls
    uint64_t crossed            # times the peer's path heard here changed to another path
    uint64_t confirms           # confirmation requests sent
    uint64_t probes             # probes sent because another path turned suspect

cdef struct Samples:
    int64_t rtt[SAMPLES]
    uint64_t rtt_n
    int64_t rtt_max
    int64_t last_reply_ns
    int64_t lag[SAMPLES]
    uint64_t lag_n
    int64_t lag_max

cdef struct Notice:
    int left
    int active
    uint64_t id
    uint64_t seen           # the peer's newest notice our node had acted on when it chose
    int64_t next

cdef struct Quality:
    int64_t next
    uint64_t sent0
    uint64_t received0

cdef struct Path:
    PathSocket sock
    Session s
    ReplayWindow win
    Counters n
    Samples smp
    Notice notice
    Quality q
    int64_t next_send

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
    uint8_t peer_macs[MAX_PATHS][6]   # accepted source MACs: any of the peer's NICs
    int npeer_macs
    int rcvbuf_bytes
    int64_t interval_ns
    int64_t reply_timeout_ns  # 0: adaptive, srtt + 4 rttvar within [floor, interval]
    int64_t confirm_ns      # confirmation probing's floor; 0: off
    bint align              # confirmation probing, and our node id is the higher: our requests
                            # go half an interval after the peer's (align_schedule)
    int64_t poll_ns
    int64_t quality_ns
    int multiplier
    int recover_count
    int window
    int rt_priority         # SCHED_FIFO priority of the loop thread; 0 = normal scheduling
    int rt_error            # errno of setting it, 0 if it took (or was not asked for)
    uint64_t seq            # last sequence number used
    uint64_t notice_sent    # id of our latest notice (0: none yet); the peer echoes what it acted on
    uint64_t notice_heard   # id of the peer's newest notice heard here
    bint seq_low_told
    bint seq_out_told
    uint64_t seq_refused    # frames not sent for want of sequence numbers
    uint64_t pass_drops     # frames dropped in the current loop pass
    int64_t next_poll
    bint ioctl_poll_due
    Path paths[MAX_PATHS]
    Event events[EVENT_QUEUE]
    uint64_t ev_head
    uint64_t ev_tail
    uint64_t ev_overflow


cdef inline int64_t mono_ns() noexcept nogil:
    return hn_clock_ns(CLOCK_MONOTONIC)


cdef inline void wake(int fd) noexcept nogil:
    cdef uint64_t one = 1
    if fd >= 0:
        write(fd, &one, 8)


cdef inline void drain_fd(int fd) noexcept nogil:
    cdef uint64_t value
    read(fd, &value, 8)


# --------------------------------------------------------------------------- events
cdef Event *new_event(Core *c, int kind, int path, int64_t t_ns) noexcept nogil:
    """A zeroed slot at the queue's tail (NULL and counted when the queue is full)."""
    cdef Event *e
    if c.ev_tail - c.ev_head >= EVENT_QUEUE:
        c.ev_overflow += 1
        return NULL
    e = &c.events[c.ev_tail % EVENT_QUEUE]
    memset(e, 0, sizeof(Event))
    e.kind, e.path, e.t_ns = kind, path, t_ns
    c.ev_tail += 1
    wake(c.event_fd)
    return e


cdef Event *path_event(Core *c, int i, int kind, int64_t t_ns) noexcept nogil:
    """A session event of path ``i``; none while the path is paused."""
    if c.paths[i].s.paused:
        return NULL
    return new_event(c, kind, i, t_ns)


cdef object event_object(Event *e, list names):
    """The hanet.model event of a queued C event."""
    cdef int k = e.kind
    if k == EV_SUSPECT:
        return model.HeartbeatSuspect(t_ns=e.t_ns, path=e.path, misses=e.misses,
                                      send_lag_max_ns=e.send_lag_max_ns,
                                      recv_delay_max_ns=e.recv_delay_max_ns)
    if k == EV_LOST:
        return model.HeartbeatLost(t_ns=e.t_ns, path=e.path, misses=e.misses,
                                   first_miss_ns=e.first_miss_ns, send_lag_max_ns=e.send_lag_max_ns,
                                   recv_delay_max_ns=e.recv_delay_max_ns,
                                   confirms_sent=e.confirms_sent, confirm_first_ns=e.confirm_first_ns,
                                   judged_ns=e.judged_ns, witnessed_ns=e.witnessed_ns)
    if k == EV_CLEARED:
        return model.HeartbeatCleared(t_ns=e.t_ns, path=e.path, rtt_ns=e.rtt_ns,
                                      confirms_sent=e.confirms_sent,
                                      confirms_answered=e.confirms_answered,
                                      confirm_first_ns=e.confirm_first_ns)
    if k == EV_RECOVERED:
        return model.HeartbeatRecovered(t_ns=e.t_ns, path=e.path, replies=e.replies, rtt_ns=e.rtt_ns)
    if k == EV_LINK_DOWN:
        return model.LinkDown(t_ns=e.t_ns, path=e.path, source="poll")
    if k == EV_LINK_UP:
        return model.LinkUp(t_ns=e.t_ns, path=e.path, source="poll")
    if k == EV_NOTICE:
        return model.PeerNotice(t_ns=e.t_ns, path=e.path, active=e.active, peer_seq=e.peer_seq,
                                crossed=bool(e.crossed))
    if k == EV_QUALITY:
        return model.PathQuality(t_ns=e.t_ns, path=e.path, loss_ppm=e.loss_ppm,
                                 rtt_p50_ns=e.rtt_p50_ns, rtt_p99_ns=e.rtt_p99_ns)
    if k == EV_CROSSED:
        return model.PathCrossed(t_ns=e.t_ns, path=e.path, peer_path=e.peer_path)
    if k == EV_SEQ_LOW:
        return model.SequenceLow(t_ns=e.t_ns, remaining=e.remaining)
    raise ValueError(f"unknown probe event kind {k}")


cdef list drain_events(Core *c, list names):
    """Queued events, copied out under the lock and turned into Python objects after it."""
    cdef Event *copy = <Event *>malloc(EVENT_QUEUE * sizeof(Event))
    cdef uint64_t k, n = 0
    if copy == NULL:
        raise MemoryError()
    try:
        with nogil:
            pthread_mutex_lock(&c.lock)
            while c.ev_head != c.ev_tail:
                copy[n] = c.events[c.ev_head % EVENT_QUEUE]
                n += 1
                c.ev_head += 1
            pthread_mutex_unlock(&c.lock)
        return [event_object(&copy[k], names) for k in range(n)]
    finally:
        free(copy)


# --------------------------------------------------------------------------- sequence numbers
cdef uint64_t next_seq(Core *c, int64_t now) noexcept nogil:
    """The next sequence number, or 0 once the space is used up (then nothing is sent)."""
    cdef Event *e
    if c.seq >= SEQ_MAX:
        c.seq_refused += 1
        if not c.seq_out_told:
            c.seq_out_told = True
            e = new_event(c, EV_SEQ_LOW, -1, now)
            if e != NULL:
                e.remaining = 0
        return 0
    c.seq += 1
    if SEQ_MAX - c.seq < SEQ_LOW_MARK and not c.seq_low_told:
        c.seq_low_told = True
        e = new_event(c, EV_SEQ_LOW, -1, now)
        if e != NULL:
            e.remaining = SEQ_MAX - c.seq
    return c.seq


# --------------------------------------------------------------------------- replay window
cdef int window_check(ReplayWindow *w, uint64_t seq, int window) noexcept nogil:
    """FRAME_OK if ``seq`` is new within the window, else DROP_REPLAY / DROP_STALE. No change."""
    cdef uint64_t off
    if not w.have or seq > w.top:
        return FRAME_OK
    off = w.top - seq
    if off >= <uint64_t>window:
        return DROP_STALE
    if w.bits[(seq % WINDOW_BITS) // 64] & (1ULL << (seq % 64)):
        return DROP_REPLAY
    return FRAME_OK


cdef void window_accept(ReplayWindow *w, uint64_t seq) noexcept nogil:
    cdef uint64_t s, k, steps
    if not w.have:
        memset(w.bits, 0, sizeof(w.bits))
        w.have = True
        w.top = seq
    elif seq > w.top:
        # Bits index sequence numbers modulo WINDOW_BITS: clear the slots the window moves over,
        # counting steps (a loop on ``s <= seq`` never ends when seq is the largest number).
        steps = seq - w.top
        if steps >= WINDOW_BITS:
            memset(w.bits, 0, sizeof(w.bits))
        else:
            s = w.top
            for k in range(steps):
                s += 1
                w.bits[(s % WINDOW_BITS) // 64] &= ~(1ULL << (s % 64))
        w.top = seq
    w.bits[(seq % WINDOW_BITS) // 64] |= 1ULL << (seq % 64)


cdef void window_close_below(ReplayWindow *w, uint64_t seq) noexcept nogil:
    """Nothing at or below ``seq`` is new any more: the floor of this run's first proven exchange."""
    if not w.have or seq > w.top:
        w.have = True
        w.top = seq
    memset(w.bits, 0xFF, sizeof(w.bits))


# --------------------------------------------------------------------------- session
cdef inline void reset_lag_window(Session *s) noexcept nogil:
    s.win_send_lag_max = 0
    s.win_recv_delay_max = 0


cdef void lost_event(Core *c, int i, int64_t now) noexcept nogil:
    """Path ``i`` is declared lost now."""
    cdef Session *s = &c.paths[i].s
    cdef Event *e
    s.state = STATE_LOST
    e = path_event(c, i, EV_LOST, now)
    if e != NULL:
        e.misses, e.first_miss_ns = s.misses, s.first_miss_ns
        e.send_lag_max_ns, e.recv_delay_max_ns = s.win_send_lag_max, s.win_recv_delay_max
        e.confirms_sent, e.confirm_first_ns = s.confirms_sent, s.confirm_first_ns
        e.judged_ns, e.witnessed_ns = s.judged_ns, s.witnessed_ns
    reset_lag_window(s)


cdef void on_miss(Core *c, int i, int64_t now) noexcept nogil:
    cdef Session *s = &c.paths[i].s
    cdef Event *e
    if s.misses < 1 << 30:  # a path dead for weeks must not wrap the counter
        s.misses += 1
    s.oks = 0
    if s.misses == 1:
        s.first_miss_ns = now
    if s.misses >= c.multiplier and s.state != STATE_LOST:
        lost_event(c, i, now)
    elif s.state == STATE_UP:
        s.state = STATE_SUSPECT
        tell_suspect(c, i, now)


cdef void tell_suspect(Core *c, int i, int64_t now) noexcept nogil:
    cdef Session *s = &c.paths[i].s
    cdef Event *e = path_event(c, i, EV_SUSPECT, now)
    s.told = True
    if e != NULL:
        e.misses = s.misses
        e.send_lag_max_ns, e.recv_delay_max_ns = s.win_send_lag_max, s.win_recv_delay_max


cdef void on_reply(Core *c, int i, int64_t now, int64_t rtt, bint answered_confirm) noexcept nogil:
    cdef Path *p = &c.paths[i]
    cdef Session *s = &p.s
    cdef Event *e
    p.n.received += 1
    s.misses = 0
    s.oks += 1
    p.smp.last_reply_ns = now
    p.smp.rtt[p.smp.rtt_n % SAMPLES] = rtt
    p.smp.rtt_n += 1
    if rtt > p.smp.rtt_max:
        p.smp.rtt_max = rtt
    update_rto(s, rtt)
    if s.state == STATE_SUSPECT:
        s.state = STATE_UP
        e = path_event(c, i, EV_CLEARED, now) if s.told else NULL
        if e != NULL:
            e.rtt_ns = rtt
            e.confirms_sent, e.confirm_first_ns = s.confirms_sent, s.confirm_first_ns
            e.confirms_answered = answered_confirm
        reset_lag_window(s)
    elif s.state == STATE_UP:
        reset_lag_window(s)
    elif s.oks >= c.recover_count:
        s.state = STATE_UP
        e = path_event(c, i, EV_RECOVERED, now)
        if e != NULL:
            e.replies, e.rtt_ns = s.oks, rtt
            e.send_lag_max_ns, e.recv_delay_max_ns = s.win_send_lag_max, s.win_recv_delay_max
        reset_lag_window(s)


cdef void update_rto(Session *s, int64_t rtt) noexcept nogil:
    cdef int64_t err
    s.rtt_peak -= s.rtt_peak // RTT_PEAK_DECAY
    if rtt > s.rtt_peak:
        s.rtt_peak = rtt
    if s.srtt == 0:
        s.srtt, s.rttvar = rtt, rtt // 2
        return
    err = rtt - s.srtt
    s.srtt += err // 8
    s.rttvar += ((err if err > 0 else -err) - s.rttvar) // 4


cdef int64_t reply_timeout(Core *c, Session *s) noexcept nogil:
    """How long the request that would be the last miss before "lost" waits for its reply.

    Earlier requests get the whole interval (a reply is matched until the next request goes), so
    a late reply or a burst of junk frames never raises a suspect. The last one gets only this:
    waiting a whole interval there too would put detection at up to (multiplier + 1) intervals
    after a fault; a timeout near the RTT brings it to multiplier intervals after the last reply
    plus the timeout, which is BFD's detection time. With confirmation probing every request
    waits only this long (see session_overdue).
    """
    cdef int64_t t = c.reply_timeout_ns
    if t == 0:
        t = s.srtt + 4 * s.rttvar if s.srtt > 0 else c.interval_ns
        if t < REPLY_TIMEOUT_FLOOR_NS:
            t = REPLY_TIMEOUT_FLOOR_NS
    return t if t < c.interval_ns else c.interval_ns


cdef int64_t confirm_window(Core *c, Session *s) noexcept nogil:
    """How long a silence must last before the path is lost: heartbeat.confirm_ms, or twice the
    longest recent RTT if longer (a peer that has lately taken that long to answer, starved or
    reading behind a flood of junk, is not silent for less), never more than BFD's detection
    time (multiplier x interval)."""
    cdef int64_t w = c.confirm_ns
    cdef int64_t cap = c.multiplier * c.interval_ns
    if 2 * s.rtt_peak > w:
        w = 2 * s.rtt_peak
    return w if w < cap else cap


cdef int64_t confirm_share(Core *c, int64_t w) noexcept nogil:
    """The longest a question of a suspicion waits within the window ``w``: its share of
    CONFIRM_QUESTIONS (of ``multiplier - 1``, if more), never under the reply timeout's floor."""
    cdef int64_t asked = c.multiplier - 1 if c.multiplier - 1 > CONFIRM_QUESTIONS else CONFIRM_QUESTIONS
    cdef int64_t share = w // asked
    return share if share > REPLY_TIMEOUT_FLOOR_NS else REPLY_TIMEOUT_FLOOR_NS


cdef int64_t confirms_needed(Core *c, Session *s) noexcept nogil:
    """Unanswered questions that make a silence evidence: as many as the window holds at its
    share (however few this thread, starved, managed to ask in it), at least ``multiplier - 1``."""
    cdef int64_t w = confirm_window(c, s)
    cdef int64_t n = w // confirm_share(c, w)
    return n if n > c.multiplier - 1 else c.multiplier - 1


cdef int64_t question_wait(Core *c, Session *s) noexcept nogil:
    """How long a question of a suspicion waits for its answer: the reply timeout, but at most
    the window's share (confirm_share)."""
    cdef int64_t t = reply_timeout(c, s)
    cdef int64_t share = confirm_share(c, confirm_window(c, s))
    return t if t < share else share


cdef int64_t confirm_wait(Core *c, Session *s, int64_t now) noexcept nogil:
    """How long a question of a suspicion waits before the next one goes.

    question_wait: a reply timeout grown by one slow answer (this thread starved a moment, say)
    still leaves the window full of questions, so a few frames lost at random never pass for a
    dead path. A late answer to an earlier question still clears the suspicion (CONFIRM_RING). No
    question is judged before its wait is over: the one that leaves too little room for another
    waits to the window's end instead. Once the path is judged, questions go at the window's
    share of ``multiplier - 1`` until the peer is heard elsewhere (there is no hurry: it may be
    stopped), then at question_wait again: the next unanswered one decides."""
    cdef int64_t w = confirm_window(c, s)
    cdef int64_t t = question_wait(c, s)
    cdef int64_t unhurried = w // (c.multiplier - 1 if c.multiplier > 1 else 1)
    cdef int64_t end = s.confirm_first_ns + w
    if s.judged_ns and not s.witnessed_ns:
        return unhurried if unhurried > t else t
    if now + 2 * t > end and end - now > t:
        t = end - now
    return t


cdef void clear_suspicion(Session *s) noexcept nogil:
    s.suspecting = s.have_pinned = s.echoing = False
    s.confirm_first_ns = s.confirms_sent = s.confirms_unanswered = s.judged_ns = s.witnessed_ns = 0
    s.nrecent = 0


cdef void begin_suspicion(Session *s, int64_t now) noexcept nogil:
    """A reply is overdue on a path believed up: confirmations go from now; the request that
    missed stays answerable (its reply may just be slow)."""
    clear_suspicion(s)
    s.suspecting = True
    s.confirm_first_ns = now
    if s.outstanding:
        s.have_pinned = True
        s.pinned.seq, s.pinned.ns, s.pinned.confirm = s.out_seq, s.out_sent_ns, s.confirming


cdef void turn_suspect(Core *c, int i, int64_t now) noexcept nogil:
    """Path ``i``, believed up, fell silent (a reply or the peer's request overdue): suspect,
    confirmations go from now. Told only once a confirmation too goes unanswered: a frame merely
    late or lost, answered at the first confirmation, is no event (the ``confirms`` counter
    shows it)."""
    cdef Session *s = &c.paths[i].s
    begin_suspicion(s, now)
    s.first_miss_ns = now
    s.state = STATE_SUSPECT
    s.told = False


cdef bint on_peer_schedule(Core *c, uint64_t send_ns, uint64_t prev_ns) noexcept nogil:
    """The peer sent a request at ``send_ns`` (its clock) a whole number of our intervals, to
    within an eighth, after its previous one at ``prev_ns``: it runs our interval, so its next
    request is due one interval on."""
    cdef int64_t d = <int64_t>(send_ns - prev_ns)
    cdef int64_t t = c.interval_ns, r
    if prev_ns == 0 or d < t - t // 8:
        return False
    r = d % t
    return r <= t // 8 or r >= t - t // 8


cdef int64_t peer_slack(Core *c, Session *s) noexcept nogil:
    """How late the peer's next scheduled request may arrive before the path turns suspect: four
    times the mean deviation of its arrivals from its schedule, as a reply timeout is four RTT
    deviations (its timer's lateness, the path's and our reading's jitter, all in one), at least
    the reply timeout's floor and at most a quarter of the interval. A request merely later than
    that costs one question, answered."""
    cdef int64_t slack = 4 * s.peer_jitter
    if slack < REPLY_TIMEOUT_FLOOR_NS:
        slack = REPLY_TIMEOUT_FLOOR_NS
    return slack if slack < c.interval_ns // 4 else c.interval_ns // 4


cdef void note_peer_lateness(Core *c, Session *s, uint64_t send_ns, int64_t now) noexcept nogil:
    """A scheduled request of the peer's, on schedule, arrived at ``now``: how far its arrival
    strayed from an interval (or a whole number of them, by the peer's send times) after the
    previous one's feeds peer_jitter."""
    cdef int64_t t = c.interval_ns
    cdef int64_t k = (<int64_t>(send_ns - s.peer_sent_ns) + t // 2) // t
    cdef int64_t dev = now - s.peer_heard_ns - k * t
    if dev < 0:
        dev = -dev
    s.peer_jitter += (dev - s.peer_jitter) // 4


cdef bint session_peer_request(Core *c, int i, uint64_t send_ns, int active,
                               int64_t now) noexcept nogil:
    """A new authenticated request of the peer's arrived on path ``i`` at ``now``.

    With confirmation probing the peer's own schedule is evidence too: once its requests come
    every interval, the next one is expected an interval later, give or take how late its
    requests have lately strayed (peer_slack); a silence past that turns the path suspect as an
    overdue reply does (session_due). Half the frames a node receives are the peer's requests,
    so a silent fault shows sooner at no cost on the wire. A confirmation from the peer is off
    its schedule, and says the peer does not hear us: on a path believed up we confirm at once
    too, so a one-way fault is found by both nodes as soon as by the one that hears nothing. Our
    questions then go as echoes until one of them goes unanswered (our own evidence), and an
    echo makes no one confirm: two nodes never echo each other's doubts. True: this request was
    on schedule."""
    cdef Session *s = &c.paths[i].s
    cdef bint on
    if c.confirm_ns == 0:
        return False
    if active == REQUEST_CONFIRM:
        if s.state == STATE_UP:
            s.peer_deadline, s.peer_doubts = now, True
        return False
    if active != 0:
        return False  # an echo, a probe (or a mark unknown here): answered, off the schedule
    on = on_peer_schedule(c, send_ns, s.peer_sent_ns)
    if on:
        note_peer_lateness(c, s, send_ns, now)
    s.peer_sent_ns = send_ns
    s.peer_heard_ns = now
    s.peer_deadline = now + c.interval_ns + peer_slack(c, s) if on else 0
    s.peer_doubts = False
    return on


cdef int64_t session_deadline(Session *s) noexcept nogil:
    """The session's next deadline: the outstanding reply's or the peer's next request's, the
    sooner; 0: none."""
    if s.reply_deadline and (s.peer_deadline == 0 or s.reply_deadline <= s.peer_deadline):
        return s.reply_deadline
    return s.peer_deadline


cdef bint session_due(Core *c, int i, int64_t now) noexcept nogil:
    """Run path ``i``'s session deadlines that have come. True: send a confirmation request now."""
    cdef Session *s = &c.paths[i].s
    cdef bint confirm = False
    if s.reply_deadline and now >= s.reply_deadline:
        confirm = session_overdue(c, i, now)
    if s.peer_deadline and now >= s.peer_deadline:
        s.peer_deadline = 0
        if c.confirm_ns > 0 and s.state == STATE_UP:
            turn_suspect(c, i, now)
            s.echoing = s.peer_doubts
            confirm = True
        s.peer_doubts = False
    return confirm


cdef bint session_overdue(Core *c, int i, int64_t now) noexcept nogil:
    """The outstanding request of path ``i`` got no reply in time: count the miss once. True
    when a confirmation request should go at once.

    With confirmation probing, a path believed up turns suspect at its first overdue reply and
    is asked again and again (confirm_wait). Its silence is evidence once the window has passed
    since that first overdue reply and the questions it holds all went unanswered
    (confirms_needed): a peer silent for less than ``confirm_ms`` (paused, starved) never is.
    The path is then judged (judged_ns), and lost once the peer, heard on another path still up
    after that moment (peer_heard_elsewhere; the loop probes them at once), leaves it silent one
    more question's wait: the peer is alive and every question here went unanswered. A peer
    silent on every path (stopped, starved) is no fault of this path, and leaving it for another
    would not help: it is lost only after BFD's detection time, multiplier x interval. With no
    other path up to tell, the judgement is the verdict."""
    cdef Session *s = &c.paths[i].s
    cdef int64_t silent_for
    s.reply_deadline = 0
    if c.confirm_ns == 0 or (s.state != STATE_UP and s.state != STATE_SUSPECT):
        on_miss(c, i, now)
        return False
    if s.misses < 1 << 30:
        s.misses += 1
    s.oks = 0
    if s.state == STATE_UP:
        turn_suspect(c, i, now)
    elif s.confirming:
        s.confirms_unanswered += 1
        s.echoing = False  # our own evidence now: our questions say we doubt
        if not s.told:
            tell_suspect(c, i, now)
    silent_for = now - s.confirm_first_ns
    if not s.judged_ns and s.confirms_unanswered >= confirms_needed(c, s) \
            and silent_for >= confirm_window(c, s):
        s.judged_ns = now
    if s.judged_ns and (silent_for >= c.multiplier * c.interval_ns or not others_can_tell(c, i)
                        or s.witnessed_ns and now - s.witnessed_ns >= question_wait(c, s)):
        lost_event(c, i, now)
        clear_suspicion(s)
        return False
    return True


cdef bint others_can_tell(Core *c, int i) noexcept nogil:
    """Whether another path, up or suspect, could hear the peer while path ``i`` is silent."""
    cdef int j
    for j in range(c.npaths):
        if j != i and (c.paths[j].s.state == STATE_UP or c.paths[j].s.state == STATE_SUSPECT):
            return True
    return False


cdef void peer_heard_elsewhere(Core *c, int j, int64_t arrived, int64_t now) noexcept nogil:
    """An authenticated frame of the peer's arrived on path ``j`` at ``arrived``, read ``now``:
    every other path judged before that is witnessed, if ``j`` is up. The peer sent the frame
    after the questions there had reached it, so it is alive; those paths are lost if they stay
    silent one more question's wait (a peer that just resumed answers all its paths at once, and
    this frame may merely be the first of its answers read). A frame that came before the
    judgement proves nothing: the peer may have stopped just after it."""
    cdef int k
    cdef int64_t due
    cdef Session *s
    if c.paths[j].s.state != STATE_UP:
        return
    for k in range(c.npaths):
        s = &c.paths[k].s
        if k != j and s.judged_ns and not s.witnessed_ns and arrived > s.judged_ns \
                and s.state == STATE_SUSPECT:
            s.witnessed_ns = arrived
            due = now + question_wait(c, s)
            if s.reply_deadline == 0 or s.reply_deadline > due:
                s.reply_deadline = due


cdef uint64_t session_request(Core *c, int i, int64_t now, bint confirm) noexcept nogil:
    """A request goes now on path ``i`` (``confirm``: a confirmation, sent at once after a
    miss): its sequence number, or 0 when nothing is to be sent (no numbers left, or a scheduled
    request while a confirmation still waits for its reply)."""
    cdef Session *s = &c.paths[i].s
    cdef uint64_t seq
    cdef int k
    if not confirm and s.confirming and s.reply_deadline and now < s.reply_deadline:
        return 0
    # The request outstanding is replaced: its miss counts now, unless this is a confirmation
    # sent before its deadline (the peer's request was overdue); it then stays answerable.
    if s.reply_deadline and (not confirm or now >= s.reply_deadline) and session_overdue(c, i, now):
        confirm = True
    seq = next_seq(c, now)
    if seq == 0:
        s.outstanding = s.confirming = False
        return 0
    s.outstanding = True
    s.confirming = confirm
    s.out_seq = seq
    s.out_sent_ns = now
    if confirm:
        s.confirms_sent += 1
        c.paths[i].n.confirms += 1
    if s.suspecting:
        if s.nrecent == CONFIRM_RING:
            for k in range(CONFIRM_RING - 1):
                s.recent[k] = s.recent[k + 1]
            s.nrecent -= 1
        s.recent[s.nrecent].seq, s.recent[s.nrecent].ns, s.recent[s.nrecent].confirm = seq, now, confirm
        s.nrecent += 1
    if s.suspecting:
        s.reply_deadline = now + confirm_wait(c, s, now)
    elif c.confirm_ns > 0 or confirm or s.misses + 1 >= c.multiplier:
        s.reply_deadline = now + reply_timeout(c, s)
    else:
        s.reply_deadline = now + c.interval_ns
    return seq


cdef bint reply_match(Session *s, uint64_t echo_seq, uint64_t echo_ns, Sent *found) noexcept nogil:
    """A reply counts only for a request of this run still answerable: the one outstanding, or
    during a suspicion the one first overdue and the last confirmations (seq and send time)."""
    cdef int k
    if s.outstanding and echo_seq == s.out_seq and echo_ns == <uint64_t>s.out_sent_ns:
        found.seq, found.ns, found.confirm = s.out_seq, s.out_sent_ns, s.confirming
        return True
    if not s.suspecting:
        return False
    if s.have_pinned and echo_seq == s.pinned.seq and echo_ns == <uint64_t>s.pinned.ns:
        found[0] = s.pinned
        return True
    for k in range(s.nrecent):
        if echo_seq == s.recent[k].seq and echo_ns == <uint64_t>s.recent[k].ns:
            found[0] = s.recent[k]
            return True
    return False


cdef bint reply_matches(Session *s, uint64_t echo_seq, uint64_t echo_ns) noexcept nogil:
    cdef Sent found
    return reply_match(s, echo_seq, echo_ns, &found)


cdef void session_reply(Core *c, int i, uint64_t seq, uint64_t echo_seq, uint64_t echo_ns,
                        int64_t now) noexcept nogil:
    """A matching reply (sequence number ``seq``, echoing a request answerable) was read at
    ``now``. The RTT runs to the reading, not to the kernel's arrival stamp: the deadlines it sets
    are met by this thread's reading, which a flood of junk queued ahead of the reply delays."""
    cdef Session *s = &c.paths[i].s
    cdef Sent found
    if not reply_match(s, echo_seq, echo_ns, &found):
        return
    s.outstanding = s.confirming = False
    s.reply_deadline = 0
    if not s.heard:
        # The first proof of this run: the peer made this frame after our request. Anything it
        # sent before (a frame recorded earlier and replayed now) is old from here on.
        s.heard = True
        window_close_below(&c.paths[i].win, seq)
    on_reply(c, i, now, now - found.ns, found.confirm)
    clear_suspicion(s)


cdef void session_resume(Path *p) noexcept nogil:
    """Events again, judged from fresh counters: the path is unknown until proven either way."""
    p.s.paused = False
    p.s.state = STATE_UNKNOWN
    p.s.misses = p.s.oks = 0
    p.s.confirming = p.s.told = False
    p.s.peer_sent_ns = p.s.peer_deadline = p.s.peer_jitter = 0
    p.s.peer_doubts = False
    clear_suspicion(&p.s)
    reset_lag_window(&p.s)


cdef void note_peer_path(Core *c, int i, int peer_path, int64_t now) noexcept nogil:
    """An authenticated frame of the peer's path ``peer_path`` arrived on path ``i``."""
    cdef Session *s = &c.paths[i].s
    cdef Event *e
    if peer_path != i and peer_path != s.peer_path:
        c.paths[i].n.crossed += 1
        e = new_event(c, EV_CROSSED, i, now)
        if e != NULL:
            e.peer_path = peer_path
    s.peer_path = peer_path


# --------------------------------------------------------------------------- I/O
cdef int open_path_socket(Core *c, int i, int *ifindex, int *count_fd, hn_ring *ring) noexcept nogil:
    """Path ``i``'s bound, filtered, group-joined AF_PACKET socket, or -errno; with its receive
    ring when the kernel grants one (``ring.map`` NULL otherwise: frames then queue in the socket
    buffer, given as much room as allowed)."""
    cdef packet_mreq mreq
    cdef int one = 1
    cdef int err, fd, cfd
    cdef int idx = if_nametoindex(c.paths[i].sock.ifname)
    if idx == 0:
        return -errno
    fd = hn_filtered_socket(idx, c.ethertype, c.peer_id, c.peer_macs, c.npeer_macs, 0, ring,
                            c.rcvbuf_bytes)
    if fd < 0:
        return fd
    memset(&mreq, 0, sizeof(mreq))
    mreq.mr_ifindex = idx
    mreq.mr_type = PACKET_MR_MULTICAST
    mreq.mr_alen = 6
    memcpy(mreq.mr_address, GROUP_MAC, 6)
    err = 0
    if setsockopt(fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mreq, sizeof(mreq)) < 0:
        err = errno
    elif ring.map == NULL and setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof(one)) < 0:
        err = errno
    if err:
        close(fd)
        hn_ring_close(ring)
        return -err
    if ring.map == NULL:
        hn_set_rcvbuf(fd, c.rcvbuf_bytes)
    cfd = hn_open_filter_counter(idx, c.ethertype, c.peer_id, c.peer_macs, c.npeer_macs)
    if cfd < 0:
        close(fd)
        hn_ring_close(ring)
        return cfd
    ifindex[0] = idx
    count_fd[0] = cfd
    return fd


cdef void collect_socket_stats(Path *p) noexcept nogil:
    """Fold the kernel's per-socket counters (reset on each read) into the path's."""
    cdef uint64_t junk = 0
    if p.sock.fd >= 0:
        hn_packet_stats(p.sock.fd, &p.n.taken, &p.n.overflow)
    if p.sock.count_fd >= 0:
        hn_packet_stats(p.sock.count_fd, &p.n.filtered, &junk)


cdef void send_frame(Core *c, int i, int kind, int active, uint64_t seq, uint64_t send_ns,
                     uint64_t echo_seq, uint64_t echo_ns) noexcept nogil:
    cdef Path *p = &c.paths[i]
    cdef uint8_t buf[FRAME_LEN]
    cdef sockaddr_ll dst
    if p.sock.fd < 0:
        p.n.send_errors += 1
        return
    build_frame(buf, c.mac, kind, i, active, c.node_id, seq, send_ns, echo_seq, echo_ns)
    memset(&dst, 0, sizeof(dst))
    dst.sll_family = AF_PACKET
    dst.sll_protocol = htons(c.ethertype)
    dst.sll_ifindex = p.sock.ifindex
    dst.sll_halen = 6
    memcpy(dst.sll_addr, GROUP_MAC, 6)
    if sendto(p.sock.fd, buf, FRAME_LEN, 0, <sockaddr *>&dst, sizeof(dst)) < 0:
        p.n.send_errors += 1


cdef void tick(Core *c, int i) noexcept nogil:
    """The request deadline of path ``i`` has come: send the next request."""
    cdef Path *p = &c.paths[i]
    cdef int64_t now = mono_ns()
    cdef int64_t lag = now - p.next_send
    cdef uint64_t seq = session_request(c, i, now, False)
    if seq:
        send_frame(c, i, KIND_REQUEST, 0, seq, <uint64_t>now, 0, 0)
        p.n.sent += 1
    p.smp.lag[p.smp.lag_n % SAMPLES] = lag
    p.smp.lag_n += 1
    if lag > p.smp.lag_max:
        p.smp.lag_max = lag
    if lag > p.s.win_send_lag_max:
        p.s.win_send_lag_max = lag
    # Absolute deadlines: the next one follows this one, not the moment we woke; slots that
    # passed while the thread was starved are skipped (and show up as lag).
    p.next_send += c.interval_ns
    if p.next_send <= now:
        p.next_send += ((now - p.next_send) // c.interval_ns + 1) * c.interval_ns


cdef void send_confirmation(Core *c, int i, int64_t now) noexcept nogil:
    """A confirmation request at once, off the schedule: the path just missed a reply."""
    cdef uint64_t seq = session_request(c, i, now, True)
    if seq:
        send_frame(c, i, KIND_REQUEST, REQUEST_ECHO if c.paths[i].s.echoing else REQUEST_CONFIRM,
                   seq, <uint64_t>now, 0, 0)
        c.paths[i].n.sent += 1


cdef void probe_other_paths(Core *c, int i, int64_t now) noexcept nogil:
    """Path ``i`` just turned suspect, or was judged: a probe on every other path that is up and
    has no request in flight (one in flight answers as well), so that the peer's answer there, an
    RTT from now, tells a dead path from a peer silent everywhere (see peer_heard_elsewhere). An
    unanswered probe makes its own path suspect in turn."""
    cdef int j
    cdef uint64_t seq
    for j in range(c.npaths):
        if j == i or c.paths[j].sock.fd < 0 or c.paths[j].s.state != STATE_UP or c.paths[j].s.reply_deadline:
            continue
        seq = session_request(c, j, now, False)
        if seq:
            send_frame(c, j, KIND_REQUEST, REQUEST_PROBE, seq, <uint64_t>now, 0, 0)
            c.paths[j].n.sent += 1
            c.paths[j].n.probes += 1


cdef void align_schedule(Core *c, int i, int64_t now) noexcept nogil:
    """The peer's scheduled request on path ``i`` just arrived: our requests there move towards
    half an interval after the peer's, so that a frame of one node or the other crosses the path
    every half interval and a silent fault shows a quarter interval after it on average, not a
    half. One node of the two aligns (the higher node id), by at most a sixteenth of an interval
    a request (a step later may cost a question of the peer's, answered: peer_slack), and within
    a sixteenth is aligned."""
    cdef Path *p = &c.paths[i]
    cdef int64_t t = c.interval_ns
    cdef int64_t step = t // 16
    cdef int64_t late = (p.next_send - now - t // 2) % t    # past the aligned slot by this
    if late < 0:
        late += t
    if late <= step or late >= t - step:
        return
    if late <= t // 2:
        p.next_send -= step
        if p.next_send < now:
            p.next_send = now
    else:
        p.next_send += step


cdef bint peer_mac_ok(Core *c, sockaddr_ll *frm) noexcept nogil:
    cdef int k
    if c.npeer_macs == 0:
        return True
    if frm.sll_halen != 6:
        return False
    for k in range(c.npeer_macs):
        if memcmp(frm.sll_addr, c.peer_macs[k], 6) == 0:
            return True
    return False


cdef int precheck(Core *c, int i, const uint8_t *buf, ssize_t n, sockaddr_ll *frm) noexcept nogil:
    """The checks that cost nothing, cheapest first, before the HMAC: the same the kernel filter
    makes (for kernels that refuse it), the source MAC, the replay window, whether a reply is
    for the request outstanding, and a path byte already known to be crossed."""
    cdef Path *p = &c.paths[i]
    cdef int code = check_shape(buf, n)
    if code != FRAME_OK:
        return code
    if memcmp(buf + HN_OFF_NODE_ID, c.peer_id, NODE_ID_LEN) != 0:
        return DROP_NODE
    if not peer_mac_ok(c, frm):
        return DROP_SRC_MAC
    code = window_check(&p.win, get_u64(buf + HN_OFF_SEQ), c.window)
    if code != FRAME_OK:
        return code
    if buf[HN_OFF_KIND] == KIND_REPLY and not reply_matches(
            &p.s, get_u64(buf + HN_OFF_ECHO_SEQ), get_u64(buf + HN_OFF_ECHO_NS)):
        return DROP_LATE
    if buf[HN_OFF_PATH] != i and buf[HN_OFF_PATH] == p.s.peer_path:
        return DROP_PATH
    return FRAME_OK


cdef void on_frame(Core *c, int i, const uint8_t *buf, ssize_t n, sockaddr_ll *frm,
                   int64_t recv_delay) noexcept nogil:
    cdef Path *p = &c.paths[i]
    cdef Parsed f
    cdef int64_t now
    cdef uint64_t seq
    cdef Event *e
    cdef int code = precheck(c, i, buf, n, frm)
    if code == FRAME_OK and not authentic(c.mac, buf):
        code = DROP_AUTH
    if code != FRAME_OK:
        p.n.drops[code] += 1
        c.pass_drops += 1
        return
    read_fields(buf, &f)
    window_accept(&p.win, f.seq)
    now = mono_ns()
    p.s.peer_frame_ns = now - recv_delay  # when it arrived: a frame read late is no later news
    if f.path != i:
        # Crossed cables: the peer's frames of another path arrive here. Named once per change.
        note_peer_path(c, i, f.path, now)
        p.n.drops[DROP_PATH] += 1
        return
    note_peer_path(c, i, f.path, now)
    if recv_delay > p.s.win_recv_delay_max:
        p.s.win_recv_delay_max = recv_delay
    if f.kind == KIND_REQUEST:
        if session_peer_request(c, i, f.send_ns, f.active, now) and c.align:
            align_schedule(c, i, now)
        seq = next_seq(c, now)
        if seq:
            send_frame(c, i, KIND_REPLY, 0, seq, <uint64_t>mono_ns(), f.seq, f.send_ns)
            p.n.answered += 1
    elif f.kind == KIND_REPLY:
        session_reply(c, i, f.seq, f.echo_seq, f.echo_ns, now)
    elif not p.s.heard:
        # A notice on a path not yet heard in this run may be a recording of an older one.
        p.n.drops[DROP_UNHEARD] += 1
    elif f.echo_seq < c.notice_heard:
        # The peer's ids grow: an older notice (overtaken on another path) says where it was.
        p.n.drops[DROP_OUTDATED] += 1
    elif f.echo_seq > c.notice_heard:
        # Each copy of a notice has its own seq; the notice id (echo_seq) tells copies apart.
        c.notice_heard = f.echo_seq
        p.n.notices_received += 1
        e = new_event(c, EV_NOTICE, i, now)
        if e != NULL:
            e.active, e.peer_seq = f.active, f.echo_seq
            # echo_ns: the newest of our notices the peer had acted on when it chose this one.
            e.crossed = c.notice_sent != 0 and f.echo_ns < c.notice_sent
    peer_heard_elsewhere(c, i, p.s.peer_frame_ns, now)


cdef int receive_ring(Core *c, int i) noexcept nogil:
    """At most RING_BUDGET frames of path ``i``'s ring, read in place; returns how many."""
    cdef hn_ring *r = &c.paths[i].sock.ring
    cdef const uint8_t *data
    cdef ssize_t n
    cdef sockaddr_ll *frm
    cdef int64_t rx_ns, delay
    cdef int k = 0
    while k < RING_BUDGET and hn_ring_next(r, &data, &n, &frm, &rx_ns):
        if frm.sll_pkttype != PACKET_OUTGOING:
            delay = hn_clock_ns(CLOCK_REALTIME) - rx_ns if rx_ns > 0 else 0
            on_frame(c, i, data, n, frm, delay if delay > 0 else 0)
        hn_ring_done(r)
        k += 1
    return k


cdef int receive(Core *c, int i) noexcept nogil:
    """At most RECV_BUDGET frames of path ``i``; what is left waits for the next pass. Returns
    how many were read."""
    if c.paths[i].sock.ring.map != NULL:
        return receive_ring(c, i)
    cdef hn_datagram batch[HN_BATCH]
    cdef hn_datagram *d
    cdef int64_t delay
    cdef int j, got, budget = RECV_BUDGET
    while budget > 0:
        # A short batch means the queue is empty; a pending socket error (ENETDOWN) is cleared by
        # reading it.
        got = hn_recv_batch(c.paths[i].sock.fd, batch, budget)
        for j in range(got):
            d = &batch[j]
            if d.frm.sll_pkttype == PACKET_OUTGOING:
                continue
            delay = hn_clock_ns(CLOCK_REALTIME) - d.rx_realtime_ns if d.rx_realtime_ns > 0 else 0
            on_frame(c, i, d.data, d.len, &d.frm, delay if delay > 0 else 0)
        if got < HN_BATCH:
            return RECV_BUDGET - budget + (got if got > 0 else 0)
        budget -= got
    return RECV_BUDGET


cdef void set_carrier(Core *c, int i, int bit, int64_t now) noexcept nogil:
    cdef Path *p = &c.paths[i]
    if bit == -ENODEV:
        bit = 0  # the interface is gone: no carrier until it returns and is rebound
    if bit < 0 or bit == p.sock.carrier:
        return
    p.sock.carrier = bit
    new_event(c, EV_LINK_UP if bit else EV_LINK_DOWN, i, now)


cdef void poll_counters(Core *c, int64_t now) noexcept nogil:
    """Carrier of every path read from the lock-free counters; ioctl paths are flagged for the
    loop to read outside the lock."""
    cdef int i
    cdef Path *p
    for i in range(c.npaths):
        p = &c.paths[i]
        if p.sock.carrier_source == CARRIER_COUNTERS:
            p.n.carrier_reads += 1
            set_carrier(c, i, hn_carrier_counters(p.sock.sysfs), now)
        elif p.sock.carrier_source == CARRIER_IOCTL:
            c.ioctl_poll_due = True


cdef void poll_ioctl_paths(Core *c) noexcept nogil:
    """ETHTOOL_GLINK for the paths without counters. Called without the core lock: the kernel
    takes RTNL for it, which another namespace's link changes may hold for milliseconds. The
    ioctl socket and interface names never change while the loop runs."""
    cdef int bits[MAX_PATHS]
    cdef int i
    cdef int64_t now
    for i in range(c.npaths):
        bits[i] = hn_carrier_ioctl(c.ctl_fd, c.paths[i].sock.ifname) \
            if c.paths[i].sock.carrier_source == CARRIER_IOCTL else -1
    now = mono_ns()
    pthread_mutex_lock(&c.lock)
    for i in range(c.npaths):
        if c.paths[i].sock.carrier_source == CARRIER_IOCTL:
            c.paths[i].n.carrier_ioctls += 1
            set_carrier(c, i, bits[i], now)
    pthread_mutex_unlock(&c.lock)


cdef int cmp_i64(const void *a, const void *b) noexcept nogil:
    cdef int64_t x = (<const int64_t *>a)[0], y = (<const int64_t *>b)[0]
    return (x > y) - (x < y)


cdef void quality_window(Core *c, int i, int64_t now) noexcept nogil:
    cdef Path *p = &c.paths[i]
    cdef uint64_t sent = p.n.sent - p.q.sent0
    cdef uint64_t got = p.n.received - p.q.received0
    cdef uint64_t k, n = got if got < SAMPLES else SAMPLES
    cdef int64_t loss_ppm = 0, p50 = 0, p99 = 0
    cdef int64_t *tmp
    cdef Event *e
    if sent > 0 and sent > got:
        loss_ppm = <int64_t>((sent - got) * 1000000 // sent)
    if n > 0:
        tmp = <int64_t *>malloc(n * sizeof(int64_t))
        if tmp != NULL:
            for k in range(n):
                tmp[k] = p.smp.rtt[(p.smp.rtt_n - n + k) % SAMPLES]
            qsort(tmp, n, sizeof(int64_t), cmp_i64)
            p50 = tmp[(n - 1) // 2]
            p99 = tmp[(n - 1) * 99 // 100]
            free(tmp)
    e = new_event(c, EV_QUALITY, i, now)
    if e != NULL:
        e.loss_ppm, e.rtt_p50_ns, e.rtt_p99_ns = loss_ppm, p50, p99
    p.q.sent0, p.q.received0 = p.n.sent, p.n.received
    p.q.next += c.quality_ns
    if p.q.next <= now:
        p.q.next = now + c.quality_ns


cdef int64_t service(Core *c) noexcept nogil:
    """Run every deadline that has come; return the next one."""
    cdef int64_t now = mono_ns()
    cdef int64_t nxt, due
    cdef int i
    cdef uint64_t seq
    cdef bint suspecting, judged
    cdef Path *p
    if now >= c.next_poll:
        poll_counters(c, now)
        c.next_poll += c.poll_ns
        if c.next_poll <= now:
            c.next_poll += ((now - c.next_poll) // c.poll_ns + 1) * c.poll_ns
    nxt = c.next_poll
    for i in range(c.npaths):
        p = &c.paths[i]
        suspecting, judged = p.s.suspecting, p.s.judged_ns != 0
        due = session_deadline(&p.s)
        if due and now >= due and p.sock.fd >= 0:
            # A frame may be waiting unread because this thread itself was late (a busy host):
            # read it before counting a silence, so only the peer's silence counts.
            receive(c, i)
        if session_due(c, i, now):
            send_confirmation(c, i, now)
        if now >= p.next_send:
            tick(c, i)
        if p.s.suspecting and not suspecting or p.s.judged_ns and not judged:
            probe_other_paths(c, i, now)
        if p.notice.left > 0 and now >= p.notice.next:
            seq = next_seq(c, now)
            if seq:
                send_frame(c, i, KIND_NOTICE, p.notice.active, seq, <uint64_t>mono_ns(), p.notice.id,
                           p.notice.seen)
                p.n.notices_sent += 1
            p.notice.left -= 1
            p.notice.next += NOTICE_GAP_NS
        if c.quality_ns > 0 and now >= p.q.next:
            quality_window(c, i, now)
        if p.next_send < nxt:
            nxt = p.next_send
        due = session_deadline(&p.s)
        if due and due < nxt:
            nxt = due
        if p.notice.left > 0 and p.notice.next < nxt:
            nxt = p.notice.next
        if c.quality_ns > 0 and p.q.next < nxt:
            nxt = p.q.next
    return nxt


cdef void run_loop(Core *c) noexcept nogil:
    """Serve the deadlines, wait, read. When the last pass read many frames or dropped any (a
    flood, or a burst), the next wait watches only the wake-up fd for COALESCE_NS (or up to the
    next deadline, if sooner) and then reads every socket: a wake-up per batch of junk frames
    rather than per frame, which is what would otherwise cost the most CPU."""
    cdef pollfd fds[1 + MAX_PATHS]
    cdef int owner[1 + MAX_PATHS]
    cdef int i, n, rc, got = 0
    cdef bint ioctl_due, busy = False
    cdef int64_t now, deadline, hold
    # The default 50 us timer slack would be most of our lateness budget at 1 ms periods.
    prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)
    if c.rt_priority > 0:
        c.rt_error = hn_realtime(c.rt_priority)
    pthread_mutex_lock(&c.lock)
    now = mono_ns()
    c.next_poll = now
    for i in range(c.npaths):
        c.paths[i].next_send = now
        c.paths[i].q.next = now + c.quality_ns
    while not c.stop:
        deadline = service(c)
        n = 0
        fds[n].fd, fds[n].events, fds[n].revents, owner[n] = c.wake_fd, POLLIN, 0, -1
        n += 1
        if busy:
            hold = mono_ns() + COALESCE_NS
            if hold < deadline:
                deadline = hold
        else:
            for i in range(c.npaths):
                if c.paths[i].sock.fd >= 0:
                    fds[n].fd, fds[n].events, fds[n].revents, owner[n] = c.paths[i].sock.fd, POLLIN, 0, i
                    n += 1
        ioctl_due, c.ioctl_poll_due = c.ioctl_poll_due, False
        pthread_mutex_unlock(&c.lock)
        if ioctl_due:
            poll_ioctl_paths(c)
        rc = hn_wait(fds, n, deadline)
        pthread_mutex_lock(&c.lock)
        got = 0
        c.pass_drops = 0
        if rc > 0 and fds[0].revents:
            drain_fd(fds[0].fd)
        if busy:
            for i in range(c.npaths):
                if c.paths[i].sock.fd >= 0:
                    got += receive(c, i)
        elif rc > 0:
            for i in range(1, n):
                if fds[i].revents and c.paths[owner[i]].sock.fd == fds[i].fd:  # not swapped by rebind()
                    if fds[i].revents & POLLERR:
                        hn_clear_error(fds[i].fd)  # else poll() reports it again at once, for ever
                    got += receive(c, owner[i])
        busy = got >= BUSY_FRAMES or c.pass_drops > 0
    pthread_mutex_unlock(&c.lock)


# --------------------------------------------------------------------------- Python face
cdef bytes _id_field(object node_id, str what):
    if not isinstance(node_id, str) or not node_id:
        raise ValueError(f"{what} must be a non-empty string")
    raw = node_id.encode("utf-8")
    if len(raw) > NODE_ID_LEN:
        raise ValueError(f"{what} {node_id!r} is longer than {NODE_ID_LEN} bytes")
    return raw.ljust(NODE_ID_LEN, b"\0")


def _number(str name, value, low, high, *, low_open=False):
    """``value`` as a float within [low, high] (or (low, high]); ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, not {value!r}")
    if value < low or (low_open and value == low) or value > high:
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} {value!r} is outside {bracket}{low}, {high}]")
    return value


def _integer(str name, value, low, high):
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, not {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} {value!r} is outside [{low}, {high}]")
    return value


cdef void init_core(Core *c, int npaths) noexcept nogil:
    cdef int i
    pthread_mutex_init(&c.lock, NULL)
    c.wake_fd = c.event_fd = c.ctl_fd = -1
    c.npaths = npaths
    for i in range(MAX_PATHS):
        c.paths[i].sock.fd = c.paths[i].sock.count_fd = -1
        c.paths[i].sock.sysfs[0] = c.paths[i].sock.sysfs[1] = c.paths[i].sock.sysfs[2] = -1
        c.paths[i].sock.carrier = -1
        c.paths[i].s.peer_path = -1


cdef class Engine:
    """The probe loop's state and its Python controls; hanet.probe.Prober is the API to use.

    Every argument is checked here (ValueError naming it): a bad one must never reach the loop,
    where a zero interval would divide by zero.
    """
    cdef Core *c
    cdef bint opened
    cdef bint carrier_ioctl_only
    cdef list names

    def __cinit__(self, *, node_id, peer_id, key, paths, interval_ms, multiplier, recover_count,
                  ethertype, replay_window, poll_interval_ms, quality_window_ms=0.0,
                  rt_priority=0, reply_timeout_ms=0.0, seq_start=0, rcvbuf_bytes=4 << 20,
                  carrier="auto", confirm_ms=0.0):
        cdef int i
        if not isinstance(key, bytes) or not key:
            raise ValueError("key must be non-empty bytes")
        if not isinstance(paths, (list, tuple)) or not 1 <= len(paths) <= MAX_PATHS:
            raise ValueError(f"between 1 and {MAX_PATHS} paths are supported")
        _number("interval_ms", interval_ms, 0, 60000, low_open=True)
        if interval_ms * 1e6 < 1:
            raise ValueError(f"interval_ms {interval_ms!r} is below one nanosecond")
        _number("poll_interval_ms", poll_interval_ms, 0, 600000, low_open=True)
        if poll_interval_ms * 1e6 < 1:
            raise ValueError(f"poll_interval_ms {poll_interval_ms!r} is below one nanosecond")
        _number("quality_window_ms", quality_window_ms, 0, 86400000)
        _number("reply_timeout_ms", reply_timeout_ms, 0, interval_ms)
        _number("confirm_ms", confirm_ms, 0, interval_ms)
        _integer("multiplier", multiplier, 1, 1000)
        _integer("recover_count", recover_count, 1, 1000)
        _integer("ethertype", ethertype, 0x0600, 0xFFFF)
        _integer("replay_window", replay_window, 1, WINDOW_BITS)
        _integer("rt_priority", rt_priority, 0, 99)
        _integer("seq_start", seq_start, 0, wire.U64_MAX - 1)
        _integer("rcvbuf_bytes", rcvbuf_bytes, 0, 1 << 30)
        if carrier not in ("auto", "ioctl"):
            raise ValueError(f"carrier must be 'auto' or 'ioctl', not {carrier!r}")
        own, peer = _id_field(node_id, "node_id"), _id_field(peer_id, "peer_id")
        if own == peer:
            raise ValueError("node_id and peer_id must differ")
        parsed = []
        for i, item in enumerate(paths):
            if not isinstance(item, (list, tuple)) or len(item) != 2:
                raise ValueError(f"path[{i}] must be (interface, peer_mac)")
            ifname, peer_mac = item
            raw = ifname.encode() if isinstance(ifname, str) else b""
            if not 0 < len(raw) < 16 or b"/" in raw or b"\0" in raw:
                raise ValueError(f"path[{i}]: bad interface name {ifname!r}")
            mac = b""
            if peer_mac:
                try:
                    mac = bytes.fromhex(str(peer_mac).replace(":", ""))
                except ValueError:
                    mac = b"?"
                if len(mac) != 6:
                    raise ValueError(f"path[{i}]: bad peer MAC {peer_mac!r}")
            parsed.append((ifname, raw, mac))
        self.c = <Core *>calloc(1, sizeof(Core))
        if self.c == NULL:
            raise MemoryError()
        init_core(self.c, len(paths))
        self.c.mac = keyed_mac(key)
        memcpy(self.c.node_id, <const char *>own, NODE_ID_LEN)
        memcpy(self.c.peer_id, <const char *>peer, NODE_ID_LEN)
        self.c.ethertype = ethertype
        self.c.interval_ns = <int64_t>(interval_ms * 1e6)
        self.c.reply_timeout_ns = <int64_t>(reply_timeout_ms * 1e6)
        self.c.confirm_ns = <int64_t>(confirm_ms * 1e6)
        self.c.align = self.c.confirm_ns > 0 and memcmp(self.c.node_id, self.c.peer_id, NODE_ID_LEN) > 0
        self.c.poll_ns = <int64_t>(poll_interval_ms * 1e6)
        self.c.quality_ns = <int64_t>(quality_window_ms * 1e6)
        self.c.multiplier = multiplier
        self.c.recover_count = recover_count
        self.c.window = replay_window
        self.c.rt_priority = rt_priority
        self.c.rcvbuf_bytes = rcvbuf_bytes
        self.carrier_ioctl_only = carrier == "ioctl"
        # Sequence numbers start at wall-clock ns, so a restarted node's frames are newer than
        # anything its peer saw from it before; the daemon passes a start that also survives the
        # wall clock stepping back (hanet.seqfloor).
        if seq_start > 0:
            self.c.seq = seq_start
        else:
            self.c.seq = <uint64_t>hn_clock_ns(CLOCK_REALTIME)
        self.names = []
        # The MAC swap moves the peer's MACs between its NICs: any of them is the peer's, on any path.
        accepted = []
        for i, (ifname, raw, mac) in enumerate(parsed):
            self.names.append(ifname)
            strncpy(self.c.paths[i].sock.ifname, raw, 15)
            if mac and mac not in accepted:
                memcpy(self.c.peer_macs[len(accepted)], <const char *>mac, 6)
                accepted.append(mac)
        self.c.npeer_macs = len(accepted)

    def __dealloc__(self):
        if self.c != NULL:
            self.close()
            pthread_mutex_destroy(&self.c.lock)
            if self.c.mac != NULL:
                EVP_MAC_CTX_free(self.c.mac)
            free(self.c)
            self.c = NULL

    cdef int _calibrate(self, int i, int ifindex, int fds[3], int *bit):
        """Where path ``i``'s carrier will be read: the counters when this namespace's sysfs
        shows them and they agree with ETHTOOL_GLINK (read once here, off the loop and outside
        its lock, to calibrate), the ioctl otherwise. ``fds`` get the open counter files."""
        cdef int k
        bit[0] = hn_carrier_ioctl(self.c.ctl_fd, self.c.paths[i].sock.ifname)
        fds[0] = fds[1] = fds[2] = -1
        if not self.carrier_ioctl_only and hn_sysfs_open(self.c.paths[i].sock.ifname, ifindex, fds) == 0:
            if bit[0] < 0 or hn_carrier_counters(fds) == bit[0]:
                return CARRIER_COUNTERS
            for k in range(3):
                close(fds[k])
                fds[k] = -1
        return CARRIER_IOCTL

    cdef void _install_carrier(self, int i, int source, int fds[3], int old[3]):
        """Swap in the counter files (under the core lock); ``old`` gets those to close."""
        cdef PathSocket *s = &self.c.paths[i].sock
        cdef int k
        for k in range(3):
            old[k] = s.sysfs[k]
            s.sysfs[k] = fds[k]
        s.carrier_source = source

    def open(self):
        """Open every socket and read the carriers; raise OSError (and close all) on failure."""
        cdef int i, fd, idx, cfd, source, bit
        cdef int fds[3]
        cdef int old[3]
        cdef hn_ring ring
        if self.opened:
            return
        self.c.stop = False
        try:
            self.c.wake_fd = self._check(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC), "eventfd")
            self.c.event_fd = self._check(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC), "eventfd")
            self.c.ctl_fd = self._check(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), "socket")
            for i in range(self.c.npaths):
                fd = open_path_socket(self.c, i, &idx, &cfd, &ring)
                if fd == -ENODEV:
                    # The NIC is missing (unplugged, a driver reset): the path starts without
                    # carrier and without a carrier source, and rebind() opens it when it returns.
                    self.c.paths[i].sock.carrier = 0
                    self.c.paths[i].sock.carrier_source = CARRIER_NONE
                    continue
                if fd < 0:
                    raise OSError(-fd, f"path[{i}] {self.names[i]}: cannot open AF_PACKET socket: "
                                       f"{strerror(-fd).decode()}")
                self.c.paths[i].sock.fd, self.c.paths[i].sock.count_fd = fd, cfd
                self.c.paths[i].sock.ring = ring
                self.c.paths[i].sock.ifindex = idx
                source = self._calibrate(i, idx, fds, &bit)
                self._install_carrier(i, source, fds, old)
                self.c.paths[i].sock.carrier = 1 if bit == 1 else 0
        except OSError:
            self.close()
            raise
        self.opened = True

    cdef int _check(self, int rc, str what) except -1:
        if rc < 0:
            raise OSError(errno, f"{what}: {strerror(errno).decode()}")
        return rc

    def close(self):
        cdef int i, k
        cdef PathSocket *s
        for i in range(self.c.npaths):
            s = &self.c.paths[i].sock
            for fd in (s.fd, s.count_fd, s.sysfs[0], s.sysfs[1], s.sysfs[2]):
                if fd >= 0:
                    close(fd)
            s.fd = s.count_fd = -1
            s.sysfs[0] = s.sysfs[1] = s.sysfs[2] = -1
            hn_ring_close(&s.ring)
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
        wake(self.c.wake_fd)

    def realtime_error(self):
        """errno of switching the loop thread to SCHED_FIFO (0: done, or not asked for)."""
        return self.c.rt_error

    def event_fileno(self):
        return self.c.event_fd

    def drain(self):
        """Queued events as hanet.model events, oldest first."""
        if self.c.event_fd >= 0:
            drain_fd(self.c.event_fd)
        return drain_events(self.c, self.names)

    def overflow(self):
        return self.c.ev_overflow

    def _path(self, int i):
        if not 0 <= i < self.c.npaths:
            raise IndexError(f"no path {i}")

    def pause(self, int i):
        self._path(i)
        pthread_mutex_lock(&self.c.lock)
        self.c.paths[i].s.paused = True
        pthread_mutex_unlock(&self.c.lock)

    def resume(self, int i):
        """Events again, judged from fresh counters: the path is unknown until proven either way."""
        self._path(i)
        pthread_mutex_lock(&self.c.lock)
        session_resume(&self.c.paths[i])
        pthread_mutex_unlock(&self.c.lock)

    def send_notice(self, int i, int active, uint64_t seen=0):
        """Send a notice (copies NOTICE_COPIES) that our identity is on ``active``; ``seen``: the
        peer's newest notice our node had acted on: what the peer compares with its latest."""
        cdef Path *p
        self._path(i)
        if not 0 <= active < 256:
            raise ValueError(f"active path {active} out of range")
        pthread_mutex_lock(&self.c.lock)
        p = &self.c.paths[i]
        p.notice.id = next_seq(self.c, mono_ns())  # the notice's own number: copies share it
        self.c.notice_sent = p.notice.id
        p.notice.active = active
        p.notice.seen = seen
        p.notice.left = NOTICE_COPIES
        p.notice.next = mono_ns()
        pthread_mutex_unlock(&self.c.lock)
        wake(self.c.wake_fd)

    def rebind(self, int i):
        """Reopen path ``i``'s socket by interface name (it may have a new ifindex)."""
        cdef int fd, idx, cfd, old, old_count, source, bit, k
        cdef int fds[3]
        cdef int old_sysfs[3]
        cdef hn_ring ring, old_ring
        self._path(i)
        fd = open_path_socket(self.c, i, &idx, &cfd, &ring)
        if fd < 0:
            raise OSError(-fd, f"path[{i}] {self.names[i]}: cannot reopen AF_PACKET socket: "
                               f"{strerror(-fd).decode()}")
        source = self._calibrate(i, idx, fds, &bit)
        pthread_mutex_lock(&self.c.lock)
        collect_socket_stats(&self.c.paths[i])
        old, old_count = self.c.paths[i].sock.fd, self.c.paths[i].sock.count_fd
        self.c.paths[i].sock.fd, self.c.paths[i].sock.count_fd = fd, cfd
        old_ring, self.c.paths[i].sock.ring = self.c.paths[i].sock.ring, ring
        self.c.paths[i].sock.ifindex = idx
        self._install_carrier(i, source, fds, old_sysfs)  # the loop reports the carrier change
        pthread_mutex_unlock(&self.c.lock)
        hn_ring_close(&old_ring)
        for fd in (old, old_count, old_sysfs[0], old_sysfs[1], old_sysfs[2]):
            if fd >= 0:
                close(fd)
        wake(self.c.wake_fd)
        return idx

    def carrier(self, int i):
        self._path(i)
        return self.c.paths[i].sock.carrier == 1

    def poll_carrier_now(self):
        """Read every path's carrier now, on the calling thread, ahead of the loop's next poll;
        changes are queued as link events like the loop's own. The lock-free counters are read
        under the core lock; the ioctl, where a path has no counters, outside it."""
        with nogil:
            pthread_mutex_lock(&self.c.lock)
            self.c.ioctl_poll_due = False
            poll_counters(self.c, mono_ns())
            pthread_mutex_unlock(&self.c.lock)
            if self.c.ctl_fd >= 0:
                poll_ioctl_paths(self.c)

    def snapshot(self, int i):
        """Counters and sample rings (oldest first) of path ``i``.

        The path is copied under the lock and turned into Python objects after it is released:
        building lists of thousands of samples under the lock would stall the probe loop (and
        show up as late replies).
        """
        cdef Path *copy
        cdef uint64_t k, n_rtt, n_lag, seq, refused
        cdef int64_t timeout
        cdef Path *p
        self._path(i)
        copy = <Path *>malloc(sizeof(Path))
        if copy == NULL:
            raise MemoryError()
        try:
            with nogil:
                pthread_mutex_lock(&self.c.lock)
                collect_socket_stats(&self.c.paths[i])
                memcpy(copy, &self.c.paths[i], sizeof(Path))
                timeout = reply_timeout(self.c, &copy.s)
                seq, refused = self.c.seq, self.c.seq_refused
                pthread_mutex_unlock(&self.c.lock)
            p = copy
            n_rtt = p.smp.rtt_n if p.smp.rtt_n < SAMPLES else SAMPLES
            n_lag = p.smp.lag_n if p.smp.lag_n < SAMPLES else SAMPLES
            return {
                "interface": self.names[i], "ifindex": p.sock.ifindex, "state": STATES[p.s.state],
                "paused": bool(p.s.paused), "heard": bool(p.s.heard),
                "peer_path": p.s.peer_path if p.s.peer_path >= 0 else None,
                "sent": p.n.sent, "received": p.n.received,
                "answered": p.n.answered, "send_errors": p.n.send_errors,
                "notices_sent": p.n.notices_sent, "notices_received": p.n.notices_received,
                "drops": {DROP_REASONS[k]: p.n.drops[k] for k in range(N_DROPS) if p.n.drops[k]},
                "filtered": p.n.filtered, "rcvbuf_overflow": p.n.overflow,
                "rx_ring": p.sock.ring.map != NULL, "confirms": p.n.confirms, "probes": p.n.probes,
                "crossed": p.n.crossed,
                "carrier": p.sock.carrier == 1, "carrier_source": CARRIER_SOURCES[p.sock.carrier_source],
                "carrier_reads": p.n.carrier_reads, "carrier_ioctls": p.n.carrier_ioctls,
                "seq_left": wire.U64_MAX - seq, "seq_refused": refused,
                "last_reply_ns": p.smp.last_reply_ns,
                "peer_request_ns": p.s.peer_heard_ns, "next_send_ns": p.next_send,
                "rtt_max_ns": p.smp.rtt_max, "send_lag_max_ns": p.smp.lag_max, "reply_timeout_ns": timeout,
                "confirm_window_ns": confirm_window(self.c, &p.s) if self.c.confirm_ns else 0,
                "rtt_samples": [p.smp.rtt[(p.smp.rtt_n - n_rtt + k) % SAMPLES] for k in range(n_rtt)],
                "lag_samples": [p.smp.lag[(p.smp.lag_n - n_lag + k) % SAMPLES] for k in range(n_lag)],
            }
        finally:
            free(copy)


cdef class SessionModel:
    """One path's session and replay window with no socket and an explicit clock: the C logic
    the loop runs, driven the way hanet.session.Session is, so one test suite checks both."""
    cdef Core *c

    def __cinit__(self, *, interval_ns, multiplier, recover_count, window=64, reply_timeout_ns=0,
                  seq_start=1, confirm_ns=0):
        _integer("interval_ns", interval_ns, 1, 60 * 10**9)
        _integer("multiplier", multiplier, 1, 1000)
        _integer("recover_count", recover_count, 1, 1000)
        _integer("window", window, 1, WINDOW_BITS)
        _integer("reply_timeout_ns", reply_timeout_ns, 0, interval_ns)
        _integer("seq_start", seq_start, 0, wire.U64_MAX)
        _integer("confirm_ns", confirm_ns, 0, interval_ns)
        self.c = <Core *>calloc(1, sizeof(Core))
        if self.c == NULL:
            raise MemoryError()
        init_core(self.c, 1)
        self.c.interval_ns, self.c.multiplier, self.c.recover_count = interval_ns, multiplier, recover_count
        self.c.window, self.c.reply_timeout_ns, self.c.seq = window, reply_timeout_ns, seq_start
        self.c.confirm_ns = confirm_ns

    def __dealloc__(self):
        if self.c != NULL:
            pthread_mutex_destroy(&self.c.lock)
            free(self.c)
            self.c = NULL

    def request(self, int64_t now, bint confirm=False):
        """Sequence number of a request sent at ``now`` (0: nothing sent); counts a pending miss."""
        return session_request(self.c, 0, now, confirm)

    def deadline(self):
        """When the outstanding request's miss or the peer's silence counts (0: nothing pending)."""
        return session_deadline(&self.c.paths[0].s)

    def overdue(self, int64_t now):
        """Run the deadlines that have passed; True: send a confirmation request now."""
        return session_due(self.c, 0, now)

    def witness(self, heard_ns=None):
        """Another path, up, that heard the peer at ``heard_ns`` (None: no other path), as the
        loop hears a frame there then."""
        if heard_ns is None:
            self.c.npaths = 1
        else:
            self.c.npaths = 2
            self.c.paths[1].s.state = STATE_UP
            self.c.paths[1].s.peer_frame_ns = heard_ns
            peer_heard_elsewhere(self.c, 1, heard_ns, heard_ns)

    def peer_request(self, uint64_t seq, uint64_t send_ns, int64_t now, int active=0):
        """A request of the peer's (already authenticated): "ok" or the drop reason."""
        cdef int code = window_check(&self.c.paths[0].win, seq, self.c.window)
        if code != FRAME_OK:
            return DROP_REASONS[code]
        window_accept(&self.c.paths[0].win, seq)
        session_peer_request(self.c, 0, send_ns, active, now)
        return "ok"

    def reply(self, uint64_t seq, uint64_t echo_seq, uint64_t echo_ns, int64_t now):
        """A reply frame (already authenticated) arrives: the drop reason or "ok"."""
        cdef int code = window_check(&self.c.paths[0].win, seq, self.c.window)
        if code == FRAME_OK and not reply_matches(&self.c.paths[0].s, echo_seq, echo_ns):
            code = DROP_LATE
        if code != FRAME_OK:
            return DROP_REASONS[code]
        window_accept(&self.c.paths[0].win, seq)
        session_reply(self.c, 0, seq, echo_seq, echo_ns, now)
        return "ok"

    def frame(self, uint64_t seq):
        """Any other authenticated frame with ``seq``: "ok" (accepted) or the drop reason."""
        cdef int code = window_check(&self.c.paths[0].win, seq, self.c.window)
        if code != FRAME_OK:
            return DROP_REASONS[code]
        window_accept(&self.c.paths[0].win, seq)
        return "ok"

    def pause(self):
        self.c.paths[0].s.paused = True

    def resume(self):
        session_resume(&self.c.paths[0])

    @property
    def state(self):
        return STATES[self.c.paths[0].s.state]

    @property
    def echoing(self):
        """Our confirmations now go as echoes (REQUEST_ECHO), not doubts of our own."""
        return bool(self.c.paths[0].s.echoing)

    @property
    def heard(self):
        return bool(self.c.paths[0].s.heard)

    @property
    def sent_ns(self):
        return self.c.paths[0].s.out_sent_ns

    @property
    def seq(self):
        return self.c.seq

    def drain(self):
        return drain_events(self.c, ["path0"])

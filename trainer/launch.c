// lora-launch: starts one process per local rank with torchrun's variables.
//
//   lora-launch [--nproc-per-node N] [--nnodes M] [--node-rank K]
//               [--master-addr HOST] [--master-port PORT] PROGRAM [ARGS...]
//
// Each rank's stderr is forwarded line by line as "[rank R] ..."; stdout is
// shared. SIGINT / SIGTERM are forwarded to every rank (a second one kills
// them). When a rank fails (non-zero exit or a signal), the others get
// SIGTERM, then SIGKILL after a grace period, and lora-launch exits non-zero
// naming the rank, how it ended and its last line on stderr. Ranks get
// SIGKILL when lora-launch dies (PR_SET_PDEATHSIG), so none trains or
// writes on without it.
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "trainer.h"

#define LAUNCH_RANKS_MAX 1024
#define LINE_MAX_BYTES 4096

typedef struct LaunchOptions {
    int nproc_per_node, nnodes, node_rank, master_port;
    const char *master_addr;
    char **argv;              // the program and its arguments
} LaunchOptions;

typedef struct Child {
    int rank;
    pid_t pid;
    int stderr_fd;            // read end, -1 after EOF
    char line[LINE_MAX_BYTES];
    size_t line_len;
    char last_line[LINE_MAX_BYTES];
    bool exited;
    int status;
} Child;

static volatile sig_atomic_t pending_signal, signals_received;

static void on_signal(int sig) {
    pending_signal = sig;
    signals_received++;
}

static void print_usage(FILE *out) {
    fprintf(out, "usage: lora-launch [--nproc-per-node N] [--nnodes M] [--node-rank K] [--master-addr HOST]\n"
                 "                   [--master-port PORT] PROGRAM [ARGS...]\n"
                 "Starts PROGRAM once per local rank with RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE,\n"
                 "MASTER_ADDR and MASTER_PORT set, as torchrun does (defaults: 1 process, 1 node, node rank 0,\n"
                 "127.0.0.1:29500).\n");
}

static bool parse_int_flag(const char *flag, const char *text, int lo, int hi, int *out) {
    char *end;
    long value = strtol(text, &end, 10);
    if (*end || end == text || value < lo || value > hi) {
        fprintf(stderr, "lora-launch: %s '%s' must be an integer in [%d, %d]\n", flag, text, lo, hi);
        return false;
    }
    *out = (int)value;
    return true;
}

static bool parse_args(int argc, char **argv, LaunchOptions *o) {
    *o = (LaunchOptions){.nproc_per_node = 1, .nnodes = 1, .node_rank = 0, .master_port = 29500,
                         .master_addr = "127.0.0.1"};
    int i = 1;
    for (; i < argc && strncmp(argv[i], "--", 2) == 0; i += 2) {
        const char *flag = argv[i], *value = i + 1 < argc ? argv[i + 1] : NULL;
        if (!value) return fprintf(stderr, "lora-launch: %s needs a value\n", flag), false;
        bool ok = true;
        if (strcmp(flag, "--nproc-per-node") == 0) ok = parse_int_flag(flag, value, 1, LAUNCH_RANKS_MAX, &o->nproc_per_node);
        else if (strcmp(flag, "--nnodes") == 0) ok = parse_int_flag(flag, value, 1, 1 << 16, &o->nnodes);
        else if (strcmp(flag, "--node-rank") == 0) ok = parse_int_flag(flag, value, 0, 1 << 16, &o->node_rank);
        else if (strcmp(flag, "--master-port") == 0) ok = parse_int_flag(flag, value, 1, 65535, &o->master_port);
        else if (strcmp(flag, "--master-addr") == 0) o->master_addr = value;
        else return fprintf(stderr, "lora-launch: unknown flag '%s' (see lora-launch --help)\n", flag), false;
        if (!ok) return false;
    }
    if (i >= argc) return fprintf(stderr, "lora-launch: no program to launch (see lora-launch --help)\n"), false;
    if (o->node_rank >= o->nnodes)
        return fprintf(stderr, "lora-launch: --node-rank %d is outside --nnodes %d\n", o->node_rank, o->nnodes), false;
    o->argv = argv + i;
    return true;
}

static void set_env_int(const char *name, int value) {
    char text[32];
    snprintf(text, sizeof text, "%d", value);
    setenv(name, text, 1);
}

// In the child: SIGKILL when the launcher dies (already gone: exit), the
// environment of local rank `local`, stderr into the pipe, exec.
static void exec_rank(const LaunchOptions *o, int local, int stderr_write, pid_t launcher) {
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) _exit(127);
    if (getppid() != launcher) _exit(127); // it died before the prctl
    set_env_int("RANK", o->node_rank * o->nproc_per_node + local);
    set_env_int("LOCAL_RANK", local);
    set_env_int("WORLD_SIZE", o->nnodes * o->nproc_per_node);
    set_env_int("LOCAL_WORLD_SIZE", o->nproc_per_node);
    set_env_int("MASTER_PORT", o->master_port);
    setenv("MASTER_ADDR", o->master_addr, 1);
    if (dup2(stderr_write, STDERR_FILENO) < 0) _exit(127);
    execvp(o->argv[0], o->argv);
    fprintf(stderr, "cannot run %s: %s\n", o->argv[0], strerror(errno));
    _exit(127);
}

static bool start_rank(const LaunchOptions *o, int local, Child *child) {
    int fds[2];
    if (pipe(fds) != 0) return fprintf(stderr, "lora-launch: pipe: %s\n", strerror(errno)), false;
    pid_t launcher = getpid(), pid = fork();
    if (pid < 0) {
        fprintf(stderr, "lora-launch: fork: %s\n", strerror(errno));
        close(fds[0]);
        close(fds[1]);
        return false;
    }
    if (pid == 0) {
        close(fds[0]);
        exec_rank(o, local, fds[1], launcher);
    }
    close(fds[1]);
    *child = (Child){.rank = o->node_rank * o->nproc_per_node + local, .pid = pid, .stderr_fd = fds[0]};
    return true;
}

// Forwards complete lines of the child's stderr as "[rank R] line".
static void forward_stderr(Child *child) {
    char buf[LINE_MAX_BYTES];
    ssize_t got = read(child->stderr_fd, buf, sizeof buf);
    if (got < 0 && errno == EINTR) return;
    if (got <= 0) {
        close(child->stderr_fd);
        child->stderr_fd = -1;
        got = 0;
    }
    for (ssize_t i = 0; i <= got; i++) {
        bool end = i == got ? child->stderr_fd < 0 && child->line_len > 0 : buf[i] == '\n';
        if (i < got && !end && child->line_len < sizeof child->line - 1) child->line[child->line_len++] = buf[i];
        if (!end) continue;
        child->line[child->line_len] = '\0';
        fprintf(stderr, "[rank %d] %s\n", child->rank, child->line);
        if (child->line_len > 0) memcpy(child->last_line, child->line, child->line_len + 1);
        child->line_len = 0;
    }
}

static void signal_all(Child *children, int n, int sig) {
    for (int i = 0; i < n; i++)
        if (!children[i].exited) kill(children[i].pid, sig);
}

static bool failed(const Child *child) {
    return child->exited && !(WIFEXITED(child->status) && WEXITSTATUS(child->status) == 0);
}

static void describe_failure(const Child *child, char *buf, size_t size) {
    int n = WIFSIGNALED(child->status)
                ? snprintf(buf, size, "rank %d (pid %d) was killed by signal %d (%s)", child->rank, (int)child->pid,
                           WTERMSIG(child->status), strsignal(WTERMSIG(child->status)))
                : snprintf(buf, size, "rank %d (pid %d) exited with status %d", child->rank, (int)child->pid,
                           WEXITSTATUS(child->status));
    if (child->last_line[0] && n > 0 && (size_t)n < size) snprintf(buf + n, size - (size_t)n, ": %s", child->last_line);
}

// Reaps exited children; returns how many are still running.
static int reap(Child *children, int n) {
    int running = 0;
    for (int i = 0; i < n; i++) {
        if (!children[i].exited && waitpid(children[i].pid, &children[i].status, WNOHANG) == children[i].pid)
            children[i].exited = true;
        running += !children[i].exited;
    }
    return running;
}

static void poll_stderr(Child *children, int n, int timeout_ms) {
    struct pollfd fds[LAUNCH_RANKS_MAX];
    int owners[LAUNCH_RANKS_MAX], count = 0;
    for (int i = 0; i < n; i++) {
        if (children[i].stderr_fd < 0) continue;
        fds[count] = (struct pollfd){.fd = children[i].stderr_fd, .events = POLLIN};
        owners[count++] = i;
    }
    if (count == 0 || poll(fds, (nfds_t)count, timeout_ms) <= 0) {
        if (count == 0) usleep((useconds_t)timeout_ms * 1000);
        return;
    }
    for (int k = 0; k < count; k++)
        if (fds[k].revents & (POLLIN | POLLHUP | POLLERR)) forward_stderr(&children[owners[k]]);
}

static bool open_pipes(const Child *children, int n) {
    for (int i = 0; i < n; i++)
        if (children[i].stderr_fd >= 0) return true;
    return false;
}

static bool killed_by_other_than(const Child *child, int sent) {
    return child->exited && WIFSIGNALED(child->status) && WTERMSIG(child->status) != sent;
}

// The rank whose failure ended the job: one killed by a signal lora-launch
// did not send (the others then fail on its lost connection) or else the
// first failed; -1 if none.
static int first_failure(const Child *children, int n, int sent) {
    int first = -1;
    for (int i = 0; i < n; i++) {
        if (!failed(&children[i])) continue;
        if (first < 0 || (killed_by_other_than(&children[i], sent) && !killed_by_other_than(&children[first], sent)))
            first = i;
    }
    return first;
}

// Runs until every rank has exited and its stderr is drained, looking for a
// failure after every reap (ranks may all exit between two looks). One look
// after the first failure a rank killed by a signal lora-launch did not send
// takes the blame: it may become reapable only after the peers it
// disconnected have exited. The
// first signal to lora-launch is forwarded to every rank, a second one kills
// them. Returns the index of the failed rank that ended the job, or -1.
static int supervise(Child *children, int n, double grace_s) {
    int failure = -1, looks_since_failure = 0;
    double kill_at = 0;
    for (;;) {
        int running = reap(children, n);
        if (failure < 0 && (failure = first_failure(children, n, 0)) >= 0) {
            signal_all(children, n, SIGTERM);
            kill_at = time_seconds() + grace_s;
        } else if (failure >= 0 && looks_since_failure++ == 0) {
            int killed = first_failure(children, n, SIGTERM);
            if (killed_by_other_than(&children[killed], SIGTERM)) failure = killed;
        }
        if (running == 0 && !open_pipes(children, n)) return failure;
        if (pending_signal) {
            signal_all(children, n, signals_received > 1 ? SIGKILL : pending_signal);
            pending_signal = 0;
        }
        poll_stderr(children, n, 100);
        if (kill_at > 0 && time_seconds() > kill_at) signal_all(children, n, SIGKILL);
    }
}

int lora_launch_main(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        print_usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    LaunchOptions options;
    if (!parse_args(argc, argv, &options)) return 2;
    struct sigaction action = {.sa_handler = on_signal};
    sigemptyset(&action.sa_mask);
    if (sigaction(SIGINT, &action, NULL) != 0 || sigaction(SIGTERM, &action, NULL) != 0)
        return fprintf(stderr, "lora-launch: sigaction: %s\n", strerror(errno)), 1;
    static Child children[LAUNCH_RANKS_MAX];
    int started = 0;
    while (started < options.nproc_per_node && start_rank(&options, started, &children[started])) started++;
    if (started < options.nproc_per_node) signal_all(children, started, SIGTERM);
    int failure = supervise(children, started, 10.0);
    if (failure < 0) return started == options.nproc_per_node ? 0 : 1;
    char message[2 * LINE_MAX_BYTES];
    describe_failure(&children[failure], message, sizeof message);
    fprintf(stderr, "lora-launch: %s; the other ranks were stopped\n", message);
    return WIFEXITED(children[failure].status) ? WEXITSTATUS(children[failure].status) : 1;
}

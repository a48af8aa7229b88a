/*
 * loxi-cni: the executable a container runtime execs for every CNI call.
 *
 * All the plugin's logic is Python (loxicni/); this program only saves the interpreter's start
 * (~9 ms) on the paths that do not need it:
 *
 *   no CNI_COMMAND       the admin CLI: exec Python with the same argv
 *   CNI_COMMAND=VERSION  answered here (the bytes Python prints, compiled in at install)
 *   any other command    forwarded to the node agent over its unix socket with the pod's netns
 *                        fd (loxicni/base/wire.py describes the bytes); with no agent
 *                        listening, exec Python in-process with the same env and stdin
 *
 * Built by scripts/write-launcher.sh, which compiles in where Python is:
 *   -DLOXI_PYTHON_ARGV='"/usr/bin/python3.11", "-I", "-S", "/opt/loxi-cni/launcher.py"'
 *   -DLOXI_VERSION_REPLY='"{\"cniVersion\":...}\n"'
 * and, for a self-contained tree (deploy/bundle.sh), the tree's directory:
 *   -DLOXI_TREE='"/opt/loxi-cni"', with argv entries starting "@TREE@" relative to it
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#if !defined(LOXI_PYTHON_ARGV) || !defined(LOXI_VERSION_REPLY)
#error "build with scripts/write-launcher.sh (LOXI_PYTHON_ARGV and LOXI_VERSION_REPLY)"
#endif

/* The agent's limits (loxicni/base/wire.py MAX_ENV, MAX_STDIN): refused here, before
 * anything is sent, so the answer does not depend on whether an agent runs. */
#define MAX_ENV (64u * 1024)
#define MAX_STDIN (4u * 1024 * 1024)
/* Results are a few KiB; anything this large is not an answer. */
#define MAX_ANSWER (64u * 1024 * 1024)
#define DEFAULT_RUN_DIR "/run/loxi-cni" /* the socket: $LOXI_CNI_SOCKET or <run dir>/agent.sock */
#define DEFAULT_TIMEOUT 120.0
#define CONNECT_TIMEOUT 5

static const char *const python_argv[] = {LOXI_PYTHON_ARGV};
#define PYTHON_ARGC (sizeof(python_argv) / sizeof(python_argv[0]))

#ifdef LOXI_TREE
/* A tree's executable finds the tree here. `loxi-cni install-host` copies the tree to a host
 * directory of its choosing and rewrites this path in place in its copies of the executable:
 * the tag, which it searches for, says how many bytes the NUL-terminated path may take.
 * volatile: the compiler must read the bytes at run time, never fold the built-in path. */
#define TREE_TAG "loxi-cni tree path, 4096 bytes:"
#define TREE_MARK "@TREE@"
static volatile const char tree_slot[sizeof(TREE_TAG) - 1 + 4096] = TREE_TAG LOXI_TREE;

/* A python_argv entry with the tree's path in place of its mark. */
static char *tree_arg(const char *arg)
{
	if (strncmp(arg, TREE_MARK, sizeof(TREE_MARK) - 1))
		return (char *)arg;
	static char tree[4096];
	if (!tree[0]) {
		size_t i = 0;
		for (; i < sizeof(tree) - 1 && tree_slot[sizeof(TREE_TAG) - 1 + i]; i++)
			tree[i] = tree_slot[sizeof(TREE_TAG) - 1 + i];
		tree[i] = 0;
	}
	const char *rest = arg + sizeof(TREE_MARK) - 1;
	char *out = malloc(strlen(tree) + strlen(rest) + 1);
	if (!out)
		abort();
	strcpy(out, tree);
	strcat(out, rest);
	return out;
}
#else
static char *tree_arg(const char *arg)
{
	return (char *)arg;
}
#endif

/* Whole-buffer write; a runtime that closed our stdout gets nothing more. */
static void write_all(int fd, const char *buf, size_t len)
{
	while (len) {
		ssize_t n = write(fd, buf, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return;
		buf += n;
		len -= (size_t)n;
	}
}

/* --- CNI error replies --------------------------------------------------------------------- */

/* s as the inside of a JSON string. Bytes >= 0x80 become U+FFFD: a reason is ASCII but for a
 * path in it, and no byte of one may break the reply. */
static void json_escape(char *out, size_t cap, const char *s)
{
	size_t o = 0;
	for (; *s && o + 7 < cap; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\') {
			out[o++] = '\\';
			out[o++] = (char)c;
		} else if (c < 0x20) {
			o += (size_t)snprintf(out + o, cap - o, "\\u%04x", c);
		} else if (c >= 0x80) {
			o += (size_t)snprintf(out + o, cap - o, "\\ufffd");
		} else {
			out[o++] = (char)c;
		}
	}
	out[o] = '\0';
}

/* The config's cniVersion found without a JSON decoder, as client.cni_version_of: a version
 * is digits and dots; anything else answers in the latest. */
static const char *cni_version_of(const char *in, size_t n, char out[16])
{
	static const char key_s[] = "\"cniVersion\"";
	const char *key = memmem(in, n, key_s, sizeof(key_s) - 1);
	if (!key)
		return "1.1.0";
	const char *colon = memchr(key, ':', n - (size_t)(key - in));
	const char *from = colon ? colon + 1 : in; /* Python: find() == -1, so + 1 is 0 */
	const char *start = memchr(from, '"', n - (size_t)(from - in));
	const char *end = start ? memchr(start + 1, '"', n - (size_t)(start + 1 - in)) : NULL;
	if (!end || end - start >= 16 || end - start < 2)
		return "1.1.0";
	size_t len = (size_t)(end - start - 1);
	if (strspn(start + 1, "0123456789.") < len)
		return "1.1.0";
	memcpy(out, start + 1, len);
	out[len] = '\0';
	return out;
}

/* Print a CNI error on stdout (where runtimes read it) and exit 1; details may be NULL. */
static void __attribute__((noreturn))
fail(const char *config, size_t config_len, int code, const char *msg, const char *details)
{
	char version[16], why[1024], reply[2048];
	int n = snprintf(reply, sizeof(reply), "{\"cniVersion\":\"%s\",\"code\":%d,\"msg\":\"%s\"",
			 cni_version_of(config, config_len, version), code, msg);
	if (details) {
		json_escape(why, sizeof(why), details);
		n += snprintf(reply + n, sizeof(reply) - (size_t)n, ",\"details\":\"%s\"", why);
	}
	n += snprintf(reply + n, sizeof(reply) - (size_t)n, "}\n");
	write_all(1, reply, (size_t)n);
	exit(1);
}

/* What the agent answers to an oversized request (there with cniVersion 1.1.0). */
static void __attribute__((noreturn))
refuse(const char *config, size_t config_len, int code, const char *what, size_t size,
       unsigned limit)
{
	char msg[128];
	snprintf(msg, sizeof(msg), "%s of %zu bytes exceeds %u", what, size, limit);
	fail(config, config_len, code, msg, NULL);
}

/* Python's wording for an OSError, so details read the same as the Python client's. */
static const char *os_error(int err)
{
	static char buf[256];
	if (err == ETIMEDOUT)
		return "timed out";
	snprintf(buf, sizeof(buf), "[Errno %d] %s", err, strerror(err));
	return buf;
}

/* --- Python -------------------------------------------------------------------------------- */

/* in/n: the config already read, for an error reply's cniVersion. */
static void __attribute__((noreturn)) exec_python(char **argv, const char *in, size_t n)
{
	int argc = 0;
	while (argv[argc])
		argc++;
	char **args = calloc(PYTHON_ARGC + (size_t)argc + 1, sizeof(char *));
	if (!args)
		abort();
	size_t i = 0;
	for (; i < PYTHON_ARGC; i++)
		args[i] = tree_arg(python_argv[i]);
	for (int a = 1; a < argc; a++)
		args[i++] = argv[a];
	execv(args[0], args);
	int err = errno;
	if (getenv("CNI_COMMAND") && *getenv("CNI_COMMAND")) {
		/* Only in the instant an upgrade swaps the tree is Python missing: say try again. */
		char why[512];
		snprintf(why, sizeof(why), "cannot run %s: %s", args[0], os_error(err));
		fail(in, n, 11, "loxi-cni cannot start its Python; try again", why);
	}
	dprintf(2, "loxi-cni: cannot run %s: %s\n", args[0], strerror(err));
	exit(127);
}

/* The in-process path, fed the stdin already read: a memfd becomes fd 0 (it is seekable and
 * needs no writer process, unlike a pipe larger than the pipe buffer). */
static void __attribute__((noreturn)) exec_in_process(char **argv, const char *in, size_t n)
{
	int fd = memfd_create("loxi-cni-stdin", MFD_CLOEXEC);
	if (fd < 0)
		fail(in, n, 5, "loxi-cni cannot hand the config to Python", os_error(errno));
	size_t done = 0;
	while (done < n) {
		ssize_t w = write(fd, in + done, n - done);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			fail(in, n, 5, "loxi-cni cannot hand the config to Python", os_error(errno));
		done += (size_t)w;
	}
	if (lseek(fd, 0, SEEK_SET) < 0 || dup2(fd, 0) < 0) /* dup2 clears FD_CLOEXEC on fd 0 */
		fail(in, n, 5, "loxi-cni cannot hand the config to Python", os_error(errno));
	close(fd);
	setenv("LOXI_CNI_NO_AGENT", "1", 1); /* Python must not try the agent again */
	exec_python(argv, in, n);
}

/* --- VERSION ------------------------------------------------------------------------------- */

/* Whether the VERSION stdin is something Python's parser certainly accepts: blank, or a JSON
 * object in ASCII within modest depth and number lengths. Anything else goes to Python, so an
 * error reply carries Python's own message; real runtimes send {"cniVersion":"x.y.z"}. */
struct scan {
	const unsigned char *p, *end;
	int depth;
};

static void skip_ws(struct scan *s)
{
	while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
		s->p++;
}

static bool eat(struct scan *s, char c)
{
	skip_ws(s);
	if (s->p < s->end && *s->p == (unsigned char)c) {
		s->p++;
		return true;
	}
	return false;
}

static bool is_digit(const struct scan *s)
{
	return s->p < s->end && *s->p >= '0' && *s->p <= '9';
}

static bool scan_string(struct scan *s)
{
	if (!eat(s, '"'))
		return false;
	while (s->p < s->end) {
		unsigned char c = *s->p++;
		if (c == '"')
			return true;
		if (c < 0x20 || c >= 0x80)
			return false;
		if (c != '\\')
			continue;
		if (s->p >= s->end)
			return false;
		c = *s->p++;
		if (c == 'u') {
			for (int i = 0; i < 4; i++, s->p++)
				if (s->p >= s->end || !isxdigit(*s->p))
					return false;
		} else if (!c || !strchr("\"\\/bfnrt", c)) {
			return false;
		}
	}
	return false;
}

static bool scan_number(struct scan *s)
{
	const unsigned char *start = s->p;
	if (s->p < s->end && *s->p == '-')
		s->p++;
	if (!is_digit(s))
		return false;
	if (*s->p++ != '0')
		while (is_digit(s))
			s->p++;
	if (s->p < s->end && *s->p == '.') {
		s->p++;
		if (!is_digit(s))
			return false;
		while (is_digit(s))
			s->p++;
	}
	if (s->p < s->end && (*s->p == 'e' || *s->p == 'E')) {
		s->p++;
		if (s->p < s->end && (*s->p == '+' || *s->p == '-'))
			s->p++;
		if (!is_digit(s))
			return false;
		while (is_digit(s))
			s->p++;
	}
	return s->p - start <= 64; /* Python refuses integers of over 4300 digits */
}

static bool scan_value(struct scan *s);

/* An object ('{', its members "key": value) or an array ('['), by its brackets. */
static bool scan_container(struct scan *s, char open, char close)
{
	if (!eat(s, open) || ++s->depth > 64) /* deep nesting is Python's to judge (recursion) */
		return false;
	if (!eat(s, close)) {
		do {
			if (open == '{' && (!scan_string(s) || !eat(s, ':')))
				return false;
			if (!scan_value(s))
				return false;
		} while (eat(s, ','));
		if (!eat(s, close))
			return false;
	}
	s->depth--;
	return true;
}

static bool literal(struct scan *s, const char *word)
{
	size_t n = strlen(word);
	if ((size_t)(s->end - s->p) < n || memcmp(s->p, word, n))
		return false;
	s->p += n;
	return true;
}

static bool scan_value(struct scan *s)
{
	skip_ws(s);
	if (s->p >= s->end)
		return false;
	switch (*s->p) {
	case '{':
		return scan_container(s, '{', '}');
	case '[':
		return scan_container(s, '[', ']');
	case '"':
		return scan_string(s);
	case 't':
		return literal(s, "true");
	case 'f':
		return literal(s, "false");
	case 'n':
		return literal(s, "null");
	default:
		return scan_number(s);
	}
}

static bool version_config_ok(const char *in, size_t n)
{
	size_t i = 0;
	while (i < n && strchr(" \t\n\r\v\f", in[i]) && in[i]) /* Python's bytes.strip() */
		i++;
	if (i == n)
		return true;
	struct scan s = {(const unsigned char *)in, (const unsigned char *)in + n, 0};
	skip_ws(&s);
	if (s.p >= s.end || *s.p != '{' || !scan_container(&s, '{', '}'))
		return false;
	skip_ws(&s);
	return s.p == s.end;
}

/* --- the agent ----------------------------------------------------------------------------- */

static void put_u32(char *p, uint32_t v)
{
	p[0] = (char)(v >> 24);
	p[1] = (char)(v >> 16);
	p[2] = (char)(v >> 8);
	p[3] = (char)v;
}

static uint32_t get_u32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static bool forwarded(const char *entry)
{
	return !strncmp(entry, "CNI_", 4) || !strncmp(entry, "LOXI_CNI_LOG", 12);
}

/* The forwarded variables as the Python client's b"\0".join of KEY=VALUE, in environ's order;
 * as in os.environ, the first of duplicate keys wins and entries without '=' are skipped.
 * Written to out unless NULL; the length is returned either way. */
static size_t env_block(char *out)
{
	extern char **environ;
	size_t len = 0;
	for (char **e = environ; *e; e++) {
		const char *eq = strchr(*e + 1, '=');
		if (!eq || !forwarded(*e))
			continue;
		size_t klen = (size_t)(eq - *e) + 1;
		bool dup = false;
		for (char **f = environ; f < e && !dup; f++)
			dup = !strncmp(*f, *e, klen);
		if (dup)
			continue;
		if (len) {
			if (out)
				out[len] = '\0';
			len++;
		}
		size_t n = strlen(*e);
		if (out)
			memcpy(out + len, *e, n);
		len += n;
	}
	return len;
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Wait for the socket until the deadline; 0 when ready, else an errno. */
static int wait_for(int fd, short events, double deadline)
{
	for (;;) {
		double left = deadline - now();
		if (left <= 0)
			return ETIMEDOUT;
		struct pollfd p = {.fd = fd, .events = events};
		int r = poll(&p, 1, left > 60 ? 60000 : (int)(left * 1000) + 1);
		if (r > 0)
			return 0;
		if (r < 0 && errno != EINTR)
			return errno;
	}
}

/* Read exactly n bytes before the deadline; 0, an errno, or -1 for a closed connection. */
static int recv_exact(int fd, unsigned char *buf, size_t n, double deadline)
{
	while (n) {
		int err = wait_for(fd, POLLIN, deadline);
		if (err)
			return err;
		ssize_t r = recv(fd, buf, n, 0);
		if (r == 0)
			return -1;
		if (r < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			return errno;
		}
		buf += r;
		n -= (size_t)r;
	}
	return 0;
}

/* Send the request, the netns fd riding on its first bytes; 0 or an errno. */
static int send_request(int sock, const char *buf, size_t n, int netns, double deadline)
{
	union {
		char space[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} control;
	bool fd_sent = netns < 0;
	while (n) {
		int err = wait_for(sock, POLLOUT, deadline);
		if (err)
			return err;
		struct iovec iov = {.iov_base = (void *)buf, .iov_len = n};
		struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
		if (!fd_sent) {
			memset(&control, 0, sizeof(control));
			msg.msg_control = control.space;
			msg.msg_controllen = sizeof(control.space);
			struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
			c->cmsg_level = SOL_SOCKET;
			c->cmsg_type = SCM_RIGHTS;
			c->cmsg_len = CMSG_LEN(sizeof(int));
			memcpy(CMSG_DATA(c), &netns, sizeof(int));
		}
		ssize_t w = sendmsg(sock, &msg, MSG_NOSIGNAL); /* a vanished agent is EPIPE, not death */
		if (w < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			return errno;
		}
		fd_sent = true;
		buf += w;
		n -= (size_t)w;
	}
	return 0;
}

/* Connect with a bounded wait: a blocking unix connect waits for room in the agent's accept
 * queue up to SO_SNDTIMEO. Returns the socket, or -1 when no agent can be reached. */
static int connect_agent(void)
{
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	const char *path = getenv("LOXI_CNI_SOCKET"), *run_dir = getenv("LOXI_CNI_RUN_DIR");
	int n = path && *path ? snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path)
			      : snprintf(addr.sun_path, sizeof(addr.sun_path), "%s/agent.sock",
					 run_dir && *run_dir ? run_dir : DEFAULT_RUN_DIR);
	if (n < 0 || (size_t)n >= sizeof(addr.sun_path))
		return -1; /* as Python's "AF_UNIX path too long": no agent to reach */
	int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (sock < 0)
		return -1;
	struct timeval tv = {.tv_sec = CONNECT_TIMEOUT};
	setsockopt(sock, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	int r;
	do
		r = connect(sock, (struct sockaddr *)&addr, sizeof(addr));
	while (r < 0 && errno == EINTR);
	if (r < 0 || fcntl(sock, F_SETFL, O_NONBLOCK) < 0) {
		close(sock);
		return -1;
	}
	return sock;
}

static double request_timeout(void)
{
	const char *s = getenv("LOXI_CNI_TIMEOUT");
	char *end;
	double t = s ? strtod(s, &end) : 0;
	return s && end != s && t > 0 ? t : DEFAULT_TIMEOUT;
}

/* Read all of stdin into buf (room for cap bytes); the total size is returned even past cap,
 * the excess read and dropped so the runtime's write end never sees a broken pipe. */
static size_t read_stdin(char *buf, size_t cap)
{
	size_t total = 0;
	char sink[65536];
	for (;;) {
		char *to = total < cap ? buf + total : sink;
		size_t room = total < cap ? cap - total : sizeof(sink);
		ssize_t r = read(0, to, room);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) /* EOF, or no stdin at all: Python would read nothing either */
			return total;
		total += (size_t)r;
	}
}

int main(int argc, char **argv)
{
	(void)argc;
	const char *command = getenv("CNI_COMMAND");
	if (!command || !*command)
		exec_python(argv, "", 0);
	bool version = !strcmp(command, "VERSION");
	const char *no_agent = getenv("LOXI_CNI_NO_AGENT");
	if (!version && no_agent && !strcmp(no_agent, "1"))
		exec_python(argv, "", 0); /* stdin untouched: Python reads it itself */

	/* One buffer holds the whole request, the config read straight into its tail. */
	size_t env_len = env_block(NULL);
	size_t head = 8 + (env_len <= MAX_ENV ? env_len : 0) + 4;
	char *req = malloc(head + MAX_STDIN);
	if (!req)
		abort();
	char *in = req + head;
	size_t in_len = read_stdin(in, MAX_STDIN);
	if (in_len > MAX_STDIN)
		refuse(in, MAX_STDIN, 6, "config", in_len, MAX_STDIN);

	if (version) {
		if (!version_config_ok(in, in_len))
			exec_in_process(argv, in, in_len); /* Python's own error message */
		static const char reply[] = LOXI_VERSION_REPLY;
		write_all(1, reply, sizeof(reply) - 1);
		return 0;
	}
	if (env_len > MAX_ENV)
		refuse(in, in_len, 4, "environment", env_len, MAX_ENV);

	int sock = connect_agent();
	if (sock < 0)
		exec_in_process(argv, in, in_len);

	memcpy(req, "LXC1", 4);
	put_u32(req + 4, (uint32_t)env_len);
	env_block(req + 8);
	put_u32(req + 8 + env_len, (uint32_t)in_len);

	/* Opened here, not by the agent: its mount namespace may not see the runtime's path.
	 * A netns that cannot be opened goes unsent; the agent reports it by its path. */
	const char *netns_path = getenv("CNI_NETNS");
	int netns = netns_path && *netns_path ? open(netns_path, O_RDONLY | O_CLOEXEC) : -1;

	double deadline = now() + request_timeout();
	int err = send_request(sock, req, head + in_len, netns, deadline);
	if (netns >= 0)
		close(netns);
	unsigned char hdr[12];
	if (!err)
		err = recv_exact(sock, hdr, sizeof(hdr), deadline);
	const char *why = NULL;
	if (err > 0)
		why = os_error(err);
	else if (err < 0)
		why = "the agent closed the connection before answering";
	else if (memcmp(hdr, "LXR1", 4) || get_u32(hdr + 8) > MAX_ANSWER)
		why = "the agent answered in an unknown format";
	if (why)
		fail(in, in_len, 11, "loxi-cni agent did not answer; try again", why);

	uint32_t code = get_u32(hdr + 4), out_len = get_u32(hdr + 8);
	unsigned char *out = malloc(out_len ? out_len : 1);
	if (!out)
		abort();
	err = recv_exact(sock, out, out_len, deadline);
	if (err)
		fail(in, in_len, 11, "loxi-cni agent did not answer; try again",
		     err > 0 ? os_error(err) : "the agent closed the connection before answering");
	write_all(1, (const char *)out, out_len);
	return (int)code;
}

/* A pod sandbox's infra process (what registry.k8s.io/pause does): hold the pod's namespaces
 * open and do nothing until told to stop. As PID 1 a signal without a handler is ignored, so
 * SIGTERM/SIGINT get one; SIGCHLD reaps whatever the pod's shared PID namespace hands us.
 * Built static (gcc -static) so the image needs no libc: tests/runtimes/oci.py packs it. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int sig) {
    (void)sig;
    _exit(0);
}

static void on_child(int sig) {
    (void)sig;
    while (waitpid(-1, 0, WNOHANG) > 0) {
    }
}

int main(void) {
    struct sigaction stop = {.sa_handler = on_stop};
    struct sigaction child = {.sa_handler = on_child, .sa_flags = SA_NOCLDSTOP | SA_RESTART};
    sigaction(SIGINT, &stop, 0);
    sigaction(SIGTERM, &stop, 0);
    sigaction(SIGCHLD, &child, 0);
    for (;;) {
        pause();
    }
}

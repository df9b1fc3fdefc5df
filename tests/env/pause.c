/* The pod sandbox's process (the "pause" container): holds the pod's namespaces, reaps orphaned
 * children and exits on SIGINT/SIGTERM. Built statically by tests/env/images.sh into the local
 * pause image, because no registry can be reached for the usual one. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { _exit(128 + sig); }

static void reap(int sig) {
  (void)sig;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

int main(int argc, char **argv) {
  if (argc > 1 && argv[1][0] == '-' && argv[1][1] == 'v') {
    puts("hyperfleet-local pause 3.2");
    return 0;
  }
  if (getpid() != 1) {
    fputs("warning: pause should be the first process of its pid namespace\n", stderr);
  }
  struct sigaction term = {.sa_handler = stop};
  struct sigaction child = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP};
  if (sigaction(SIGINT, &term, NULL) < 0 || sigaction(SIGTERM, &term, NULL) < 0 ||
      sigaction(SIGCHLD, &child, NULL) < 0) {
    return 1;
  }
  for (;;) {
    pause();
  }
}

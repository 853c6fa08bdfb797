/* marker: a user process with known state, for vmstate_gdb's tests of the software inside.
 *
 * The parent maps a file, keeps a pipe open, starts a second thread (blocked in pause()), forks a
 * child, and then both wait in nanosleep() at the bottom of a known call chain
 * (main -> marker_level1 -> marker_level2 -> marker_level3 -> marker_wait), printing once a second
 *
 *     MARKER <role> pid=<pid> value=<marker_global in hex> text=<marker_text> host=<uname -n>
 *
 * so an edit of marker_global or marker_text (user memory) or of the kernel's host name (kernel
 * memory) in a saved snapshot shows on the console after the resume. Built static, non-PIE, with debug info (tests/linux/build.sh), so `gdb marker app.core`
 * finds the functions and globals at fixed addresses.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#define MAPPED_SIZE 8192

volatile unsigned long marker_global = 0x5eed0001c0ffee00UL;
char marker_text[32] = "hello-from-marker";
volatile unsigned long marker_thread_spins;
char *marker_mapping;

__attribute__((noinline)) void marker_wait(const char *role)
{
    struct timespec one = {1, 0};
    struct utsname uts;
    for (;;) {
        if (uname(&uts) != 0)
            strcpy(uts.nodename, "?");
        printf("MARKER %s pid=%d value=%#lx text=%s host=%s\n", role, getpid(), marker_global, marker_text,
               uts.nodename);
        fflush(stdout);
        nanosleep(&one, NULL);
    }
}

__attribute__((noinline)) void marker_level3(const char *role) { marker_wait(role); __asm__ volatile(""); }
__attribute__((noinline)) void marker_level2(const char *role) { marker_level3(role); __asm__ volatile(""); }
__attribute__((noinline)) void marker_level1(const char *role) { marker_level2(role); __asm__ volatile(""); }

__attribute__((noinline)) static void *marker_thread(void *arg)
{
    (void)arg;
    marker_thread_spins++;
    for (;;)
        pause();
    return NULL;
}

int main(void)
{
    int fd = open("/tmp/marker.dat", O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || ftruncate(fd, MAPPED_SIZE) != 0) {
        perror("marker: /tmp/marker.dat");
        return 1;
    }
    marker_mapping = mmap(NULL, MAPPED_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (marker_mapping == MAP_FAILED) {
        perror("marker: mmap");
        return 1;
    }
    strcpy(marker_mapping, "MARKER-MAPPED-FILE");
    int pipefd[2];
    if (pipe(pipefd) != 0) {
        perror("marker: pipe");
        return 1;
    }
    pthread_t thread;
    if (pthread_create(&thread, NULL, marker_thread, NULL) != 0) {
        fprintf(stderr, "marker: pthread_create failed\n");
        return 1;
    }
    pid_t child = fork();
    if (child < 0) {
        perror("marker: fork");
        return 1;
    }
    if (child == 0) {
        marker_global = 0x5eed0002c0ffee00UL;
        strcpy(marker_text, "hello-from-child");
        marker_level1("child");
    }
    FILE *pids = fopen("/tmp/marker.pids.tmp", "w");
    if (pids) {  /* init waits for this file before it reports what it sees */
        fprintf(pids, "%d %d\n", getpid(), child);
        fclose(pids);
        rename("/tmp/marker.pids.tmp", "/tmp/marker.pids");
    }
    printf("MARKER-START parent=%d child=%d\n", getpid(), child);
    fflush(stdout);
    marker_level1("parent");
    return 0;
}

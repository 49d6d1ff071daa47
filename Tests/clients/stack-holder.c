/*
 * stack-holder: keeps its only pointer to one object on the main thread's stack and another on a
 * second thread's stack. With stack=on neither may be reported; with stack=off both are leaks.
 * Prints "STACK 0x..." for each, then "READY", and waits for stdin EOF or "exit".
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t changed = PTHREAD_COND_INITIALIZER;
static int announced, finished;

static void *hold_on_thread_stack(void *arg) {
    (void)arg;
    void *volatile object = malloc(200);
    memset(object, 0x11, 200);
    pthread_mutex_lock(&lock);
    printf("STACK %p\n", object);
    fflush(stdout);
    announced = 1;
    pthread_cond_broadcast(&changed);
    while (!finished) pthread_cond_wait(&changed, &lock);
    pthread_mutex_unlock(&lock);
    free(object);
    return NULL;
}

int main(void) {
    void *volatile object = malloc(100);
    memset(object, 0x22, 100);
    printf("STACK %p\n", object);
    pthread_t thread;
    pthread_create(&thread, NULL, hold_on_thread_stack, NULL);
    pthread_mutex_lock(&lock);
    while (!announced) pthread_cond_wait(&changed, &lock);
    pthread_mutex_unlock(&lock);
    printf("READY\n");
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof line, stdin) && strncmp(line, "exit", 4) != 0) {
    }
    pthread_mutex_lock(&lock);
    finished = 1;
    pthread_cond_broadcast(&changed);
    pthread_mutex_unlock(&lock);
    pthread_join(thread, NULL);
    free(object);
    return 0;
}

/* The debug build's validators (core/validate.c) catch what the release
 * build lets pass.  In a child, three blocks of one class are freed onto
 * the thread front and one freed block's link is overwritten with
 * another's (a use after free that keeps the link valid: it still points
 * into the same SuperSlab, so the list checks of the release build accept
 * it).  The front now holds one block fewer than it counts.  Blocks of
 * another class are then allocated until the thread has refilled many
 * times: the heap is validated once per 16 refills for each SuperSlab it
 * holds, and the validator must report the front's count.  The control runs the same
 * steps without the overwrite and must not be reported.  Built and run
 * for the debug build only (tests/debug).
 * SPDX-License-Identifier: MIT */
#include <signal.h>
#include <sys/wait.h>
#include "testutil.h"

#pragma GCC diagnostic ignored "-Wuse-after-free"

static void front_then_refills(size_t corrupt)
{
    char *h = tu_launder(malloc(48)), *a = tu_launder(malloc(48)), *b = tu_launder(malloc(48));
    free(h);
    free(a);
    free(b); /* b's link now leads to a (the front puts a free behind its head) */
    if (corrupt)
        memcpy(b, a, sizeof(void *)); /* b skips a: the list is one block short */
    static void *kept[4000];
    for (int i = 0; i < 4000; i++) /* 1 KiB blocks: about 1,000 refills */
        kept[i] = tu_launder(malloc(1000));
    for (int i = 0; i < 4000; i++)
        free(kept[i]);
}

int main(void)
{
    char msg[512];
    int st = tu_in_child(front_then_refills, 0, msg, sizeof msg);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "control: status %#x (%s)", st, msg);
    st = tu_in_child(front_then_refills, 1, msg, sizeof msg);
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT, "corrupted front: status %#x, not an abort", st);
    CHECK(strncmp(msg, "hakmem: assertion failed: ", 26) == 0 && strstr(msg, "validate.c"),
          "corrupted front: reported as \"%s\"", msg);
    return TU_DONE();
}

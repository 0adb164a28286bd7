/* check.h — the check/report harness shared by the C tests.
 *
 * Each check counts as passed or failed; a failure prints one line naming the source line and
 * what was checked. check_report() prints "N passed, M failed" and returns the exit status
 * (nonzero if anything failed). Header-only: every test program is a single translation unit.
 */
#ifndef FN_TEST_CHECK_H
#define FN_TEST_CHECK_H

#include "include/fastnet.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

static int passed, failed;

#define CHECK(condition) check_that((condition), #condition, __LINE__)

static inline bool check_that(bool ok, const char *what, int line) {
    if (ok) {
        passed++;
    } else {
        failed++;
        printf("FAILED line %d: %s\n    last error: %s\n", line, what, fn_last_error());
    }
    return ok;
}

/* A call that must fail with `status` and a message containing `word`. */
#define EXPECT_ERROR(call, status, word) expect_error((call), (status), (word), #call, __LINE__)

static inline void expect_error(fn_status got, fn_status want, const char *word, const char *call,
                                int line) {
    const char *message = fn_last_error();
    if (got == want && message && message[0] && strstr(message, word)) {
        passed++;
        return;
    }
    failed++;
    printf("FAILED line %d: %s\n    status %d (expected %d), message \"%s\" (expected to contain "
           "\"%s\")\n",
           line, call, (int)got, (int)want, message ? message : "(null)", word);
}

/* Prints the totals; the program's exit status. */
static inline int check_report(void) {
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}

#endif

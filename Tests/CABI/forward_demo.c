/* A C program that uses libSwiftUNetC through swiftunet.h only: it builds a
 * small model, checks the error path, runs a forward and prints a checksum.
 * Exit status 0 means every step behaved as the header documents. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "swiftunet.h"

#define CHECK(cond, ...) do { if (!(cond)) { fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); return 1; } } while (0)

int main(void) {
    CHECK(swiftunet_abi_version() == SWIFTUNET_ABI_VERSION, "abi version mismatch");

    /* An invalid configuration fails with a message, not a crash. */
    swiftunet_model *bad = NULL;
    const int64_t bad_dims[2] = {12, 16};
    int32_t rc = swiftunet_model_create(8, 3, bad_dims, 2, 16, 0, &bad);
    CHECK(rc == SWIFTUNET_ERR_ARGUMENT && bad == NULL, "bad config accepted (rc=%d)", rc);
    CHECK(strstr(swiftunet_last_error(), "hidden_dims") != NULL, "message lacks the argument: %s", swiftunet_last_error());

    const int64_t dims[3] = {8, 16, 32};
    swiftunet_model *model = NULL;
    rc = swiftunet_model_create(8, 3, dims, 3, 16, 7, &model);
    CHECK(rc == SWIFTUNET_OK && model != NULL, "create failed: %s", swiftunet_last_error());

    int64_t n_params = swiftunet_model_param_count(model);
    const char *first = NULL;
    int64_t ndim = 0, shape[4], numel = 0;
    rc = swiftunet_model_param_info(model, 0, &first, &ndim, shape, &numel);
    CHECK(rc == SWIFTUNET_OK && strcmp(first, "time_mlp.fc1.weight") == 0 && ndim == 2 && shape[0] == 64 && shape[1] == 16,
          "unexpected first parameter");

    enum { B = 2, C = 3, H = 8, W = 8, N = B * C * H * W };
    float x[N], out[N];
    for (int i = 0; i < N; i++) x[i] = (float)sin(0.37 * i);
    int64_t t[B] = {0, 999};
    rc = swiftunet_model_forward(model, x, B, C, H, W, t, out);
    CHECK(rc == SWIFTUNET_OK, "forward failed: %s", swiftunet_last_error());
    CHECK(swiftunet_debug_last_input() == (const void *)x, "input was not read in place");

    double checksum = 0;
    for (int i = 0; i < N; i++) {
        CHECK(isfinite(out[i]), "non-finite output at %d", i);
        checksum += fabs(out[i]);
    }
    CHECK(checksum > 0, "all-zero output");

    /* A wrong height is refused with a message naming it. */
    rc = swiftunet_model_forward(model, x, 1, C, 6, 8, t, out);
    CHECK(rc == SWIFTUNET_ERR_ARGUMENT && strstr(swiftunet_last_error(), "height") != NULL,
          "bad height accepted (rc=%d): %s", rc, swiftunet_last_error());

    printf("params=%lld checksum=%.6f\n", (long long)n_params, checksum);
    swiftunet_model_release(model);
    return 0;
}

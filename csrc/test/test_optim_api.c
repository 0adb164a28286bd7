/* test_optim_api.c — the optimizers through the public C API only (include/fastnet.h): parameter
 * groups and how the schedule runs per group, Adagrad's and RMSProp's state, amsgrad's extra slot,
 * max-norm, clipping and the gradient norm, and every refused call. The update rules themselves
 * are checked against numpy references and torch.optim by tests/test_optim.py and
 * tests/test_regularisation.py; here each check is one that a C program sees directly.
 *
 * Prints one line per failure and finally "N passed, M failed"; exits nonzero on failure. Run
 * under AddressSanitizer (make sanitize), it also checks that no path leaks or overruns.
 */
#include "include/fastnet.h"
#include "test/check.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool close_to(double a, double b) { return fabs(a - b) <= 1e-12 * fabs(b) + 1e-300; }

/* Linear(6, 5), Tanh, Linear(5, 3): weights (5, 6) and (3, 5), biases (5) and (3). */
static const char *const SPEC =
    "{\"format\": \"fastnet.model\", \"version\": 1, \"dtype\": \"float64\", \"seed\": 11,"
    " \"input_shape\": [6],"
    " \"nodes\": [{\"name\": \"0\", \"op\": \"linear\", \"in_features\": 6, \"out_features\": 5},"
    "           {\"name\": \"1\", \"op\": \"tanh\"},"
    "           {\"name\": \"2\", \"op\": \"linear\", \"in_features\": 5, \"out_features\": 3}]}";

static fn_model *create(void) {
    fn_model *m = NULL;
    if (fn_model_create(SPEC, &m) != FN_OK) {
        printf("cannot create the test model: %s\n", fn_last_error());
        exit(1);
    }
    return m;
}

/* Group 0 for weights, 1 for biases, from tensor_info's is_bias; entries of buffers -1. */
static int *weights_and_biases(const fn_model *m) {
    int n = fn_model_tensor_count(m);
    int *group = malloc((size_t)n * sizeof *group);
    for (int i = 0; i < n; i++) {
        fn_tensor_info info;
        fn_model_tensor_info(m, i, &info);
        group[i] = info.is_buffer ? -1 : info.is_bias ? 1 : 0;
    }
    return group;
}

static void fill_grads(fn_model *m, double scale) {
    double *g = fn_model_grads(m);
    for (int64_t i = 0; i < fn_model_param_total(m); i++)
        g[i] = scale * (double)((i * 7) % 11 - 5) / 5.0;
}

/* ---------------------------------------------------------------- groups and the schedule */

/* SGD without momentum moves each parameter by exactly lr_g(t) * g, each group at its own rate,
 * which the schedule scales by the same factor (STEP) or takes to its floor (COSINE). */
static void test_groups_and_schedule(void) {
    fn_model *m = create();
    fn_tensor_info info;
    CHECK(fn_model_find_tensor(m, "0.bias", &info) == FN_OK && info.is_bias);
    CHECK(fn_model_find_tensor(m, "2.weight", &info) == FN_OK && !info.is_bias);
    fn_optimizer sgd = {.kind = FN_OPT_SGD, .lr = 1.0};
    CHECK(fn_model_set_optimizer(m, &sgd) == FN_OK);
    CHECK(fn_model_param_group_count(m) == 0 && fn_model_group_lr(m, 0) == 1.0);
    CHECK(fn_model_group_lr(m, 1) == 0);
    int *group = weights_and_biases(m);
    fn_param_group groups[2] = {{.lr = 0.2}, {.lr = 0.05}};
    CHECK(fn_model_set_param_groups(m, groups, 2, group) == FN_OK);
    fn_param_group back;
    CHECK(fn_model_param_group_count(m) == 2);
    CHECK(fn_model_get_param_group(m, 1, &back) == FN_OK && back.lr == 0.05);
    fn_schedule step = {.kind = FN_SCHEDULE_STEP, .step_size = 2, .gamma = 0.5};
    CHECK(fn_model_set_schedule(m, &step) == FN_OK);
    int64_t total = fn_model_param_total(m);
    double *params = fn_model_params(m), *grads = fn_model_grads(m);
    double *before = malloc((size_t)total * sizeof *before);
    bool exact = true;
    for (int64_t t = 0; t < 6; t++) {
        double factor = pow(0.5, (double)(t / 2));
        CHECK(close_to(fn_model_group_lr(m, 0), 0.2 * factor));
        CHECK(close_to(fn_model_group_lr(m, 1), 0.05 * factor));
        CHECK(fn_model_current_lr(m) == fn_model_group_lr(m, 0));
        fill_grads(m, 1.0);
        memcpy(before, params, (size_t)total * sizeof *before);
        double lr0 = fn_model_group_lr(m, 0), lr1 = fn_model_group_lr(m, 1);
        CHECK(fn_model_step(m) == FN_OK);
        for (int i = 0; i < fn_model_tensor_count(m); i++) {
            fn_model_tensor_info(m, i, &info);
            double lr = group[i] == 0 ? lr0 : lr1;
            for (int64_t k = info.offset; k < info.offset + info.count; k++)
                exact &= params[k] == before[k] - lr * grads[k];
        }
    }
    CHECK(exact);
    /* COSINE takes each group from its lr to the same floor. */
    fn_schedule cosine = {.kind = FN_SCHEDULE_COSINE, .total_steps = 4, .min_lr = 0.01};
    CHECK(fn_model_set_schedule(m, &cosine) == FN_OK);
    fn_model_set_optimizer_steps(m, 2);
    CHECK(close_to(fn_model_group_lr(m, 0), 0.01 + (0.2 - 0.01) / 2));
    CHECK(close_to(fn_model_group_lr(m, 1), 0.01 + (0.05 - 0.01) / 2));
    fn_model_set_optimizer_steps(m, 9);
    CHECK(close_to(fn_model_group_lr(m, 0), 0.01) && close_to(fn_model_group_lr(m, 1), 0.01));
    /* The groups survive a new optimizer and a reset; n = 0 removes them. */
    fn_optimizer adam = {.kind = FN_OPT_ADAM, .lr = 0.3, .beta1 = 0.9, .beta2 = 0.999};
    CHECK(fn_model_set_optimizer(m, &adam) == FN_OK);
    fn_model_reset_optimizer(m);
    CHECK(fn_model_param_group_count(m) == 2);
    CHECK(fn_model_set_param_groups(m, NULL, 0, NULL) == FN_OK);
    CHECK(fn_model_param_group_count(m) == 0 && close_to(fn_model_group_lr(m, 0), 0.3));
    /* One group may omit group_of_tensor. */
    fn_param_group one = {.lr = 0.7, .weight_decay = 0.1};
    CHECK(fn_model_set_param_groups(m, &one, 1, NULL) == FN_OK);
    CHECK(close_to(fn_model_group_lr(m, 0), 0.7));
    /* Setting groups again, as a schedule in a training loop does, allocates nothing. */
    uint64_t allocations = fn_allocations();
    for (int t = 0; t < 10; t++) {
        groups[0].lr = 0.1 / (t + 1);
        CHECK(fn_model_set_param_groups(m, groups, 2, group) == FN_OK);
        CHECK(fn_model_step(m) == FN_OK);
    }
    CHECK(fn_allocations() == allocations);
    free(before);
    free(group);
    fn_model_free(m);
}

/* ---------------------------------------------------------------- state */

static void test_state_slots(void) {
    fn_model *m = create();
    int64_t total = fn_model_param_total(m);
    fn_optimizer adagrad = {.kind = FN_OPT_ADAGRAD, .lr = 0.1, .eps = 1e-10,
                            .initial_accumulator_value = 0.25};
    CHECK(fn_model_set_optimizer(m, &adagrad) == FN_OK);
    CHECK(fn_model_optimizer_state_count(m) == 1);
    double *sum = fn_model_optimizer_state(m, 0);
    CHECK(sum[0] == 0.25 && sum[total - 1] == 0.25);
    fill_grads(m, 1.0);
    CHECK(fn_model_step(m) == FN_OK);
    const double *grads = fn_model_grads(m);
    CHECK(sum[1] == 0.25 + grads[1] * grads[1]);
    fn_model_reset_optimizer(m);
    CHECK(sum[1] == 0.25 && fn_model_optimizer_steps(m) == 0);

    fn_optimizer rms = {.kind = FN_OPT_RMSPROP, .lr = 0.01, .alpha = 0.9, .eps = 1e-8};
    CHECK(fn_model_set_optimizer(m, &rms) == FN_OK && fn_model_optimizer_state_count(m) == 1);
    rms.momentum = 0.5;
    CHECK(fn_model_set_optimizer(m, &rms) == FN_OK && fn_model_optimizer_state_count(m) == 2);
    rms.centered = 1;
    CHECK(fn_model_set_optimizer(m, &rms) == FN_OK && fn_model_optimizer_state_count(m) == 3);
    CHECK(fn_model_step(m) == FN_OK);

    /* amsgrad adds a slot that starts at 0, and keeps the moments. */
    fn_optimizer adam = {.kind = FN_OPT_ADAM, .lr = 0.01, .beta1 = 0.9, .beta2 = 0.999,
                         .eps = 1e-8};
    CHECK(fn_model_set_optimizer(m, &adam) == FN_OK && fn_model_optimizer_state_count(m) == 2);
    CHECK(fn_model_step(m) == FN_OK);
    double v1 = ((double *)fn_model_optimizer_state(m, 1))[3];
    CHECK(v1 > 0);
    adam.amsgrad = 1;
    CHECK(fn_model_set_optimizer(m, &adam) == FN_OK && fn_model_optimizer_state_count(m) == 3);
    CHECK(((double *)fn_model_optimizer_state(m, 1))[3] == v1);
    CHECK(((double *)fn_model_optimizer_state(m, 2))[3] == 0);
    CHECK(fn_model_step(m) == FN_OK);
    const double *v = fn_model_optimizer_state(m, 1), *vmax = fn_model_optimizer_state(m, 2);
    CHECK(vmax[3] == v[3]);
    CHECK(fn_model_optimizer_state(m, 3) == NULL);
    fn_model_free(m);
}

/* ---------------------------------------------------------------- max-norm and clipping */

static void test_max_norm(void) {
    fn_model *m = create();
    fn_optimizer sgd = {.kind = FN_OPT_SGD, .lr = 0};
    CHECK(fn_model_set_optimizer(m, &sgd) == FN_OK);
    fn_tensor_info weight, bias;
    CHECK(fn_model_find_tensor(m, "0.weight", &weight) == FN_OK);
    CHECK(fn_model_find_tensor(m, "0.bias", &bias) == FN_OK);
    double *params = fn_model_params(m);
    for (int64_t k = 0; k < weight.count; k++) params[weight.offset + k] = (double)(k % 6);
    for (int64_t k = 0; k < bias.count; k++) params[bias.offset + k] = 50.0;
    fn_param_group group = {.lr = 0, .max_norm = 3.0};
    CHECK(fn_model_set_param_groups(m, &group, 1, NULL) == FN_OK);
    fn_model_zero_grad(m);
    CHECK(fn_model_step(m) == FN_OK);
    /* Each row of 0.weight was (0, 1, 2, 3, 4, 5), of norm sqrt(55): now of norm 3. */
    bool rescaled = true;
    for (int64_t k = 0; k < weight.count; k++)
        rescaled &= close_to(params[weight.offset + k], (double)(k % 6) * 3.0 / sqrt(55.0));
    CHECK(rescaled);
    CHECK(params[bias.offset] == 50.0 && params[bias.offset + bias.count - 1] == 50.0);
    fn_model_free(m);
}

static void test_clipping(void) {
    fn_model *m = create();
    int64_t total = fn_model_param_total(m);
    fn_optimizer sgd = {.kind = FN_OPT_SGD, .lr = 0.1, .clip_grad_norm = 1.0};
    CHECK(fn_model_set_optimizer(m, &sgd) == FN_OK);
    CHECK(fn_model_last_grad_norm(m) == -1);
    fill_grads(m, 1.0);
    double *params = fn_model_params(m), *grads = fn_model_grads(m);
    double sum = 0;
    for (int64_t i = 0; i < total; i++) sum += grads[i] * grads[i];
    double norm = sqrt(sum), factor = 1.0 / (norm + 1e-6);
    CHECK(norm > 1);
    double before = params[2];
    CHECK(fn_model_step(m) == FN_OK);
    CHECK(close_to(fn_model_last_grad_norm(m), norm));
    CHECK(close_to(params[2], before - 0.1 * grads[2] * factor));
    /* A NaN gradient: refused, and nothing changes. */
    grads[5] = NAN;
    before = params[2];
    EXPECT_ERROR(fn_model_step(m), FN_ENUMERIC, "gradient norm is nan");
    CHECK(params[2] == before && fn_model_optimizer_steps(m) == 1);
    CHECK(isnan(fn_model_last_grad_norm(m)));
    /* INFINITY measures the norm without clipping; 0 does not measure it. */
    fill_grads(m, 1.0);
    sgd.clip_grad_norm = INFINITY;
    CHECK(fn_model_set_optimizer(m, &sgd) == FN_OK);
    before = params[2];
    CHECK(fn_model_step(m) == FN_OK);
    CHECK(close_to(fn_model_last_grad_norm(m), norm) && params[2] == before - 0.1 * grads[2]);
    sgd.clip_grad_norm = 0;
    sgd.clip_grad_value = 0.3;
    CHECK(fn_model_set_optimizer(m, &sgd) == FN_OK);
    before = params[2];
    CHECK(fn_model_step(m) == FN_OK);
    double clamped = grads[2] > 0.3 ? 0.3 : grads[2] < -0.3 ? -0.3 : grads[2];
    CHECK(fn_model_last_grad_norm(m) == -1 && params[2] == before - 0.1 * clamped);
    CHECK(fabs(grads[2]) > 0.3); /* the arena keeps the unclipped gradient */
    fn_model_free(m);
}

/* check_finite: the norm of every update, the layer and tensor of a non-finite gradient. */
static void test_check_finite(void) {
    fn_model *m = create();
    int64_t total = fn_model_param_total(m);
    fn_optimizer sgd = {.kind = FN_OPT_SGD, .lr = 0.1, .momentum = 0.9, .check_finite = 1};
    CHECK(fn_model_set_optimizer(m, &sgd) == FN_OK);
    fill_grads(m, 1.0);
    double *params = fn_model_params(m), *grads = fn_model_grads(m);
    double sum = 0;
    for (int64_t i = 0; i < total; i++) sum += grads[i] * grads[i];
    double before = params[2];
    CHECK(fn_model_step(m) == FN_OK);
    CHECK(close_to(fn_model_last_grad_norm(m), sqrt(sum)));
    CHECK(params[2] == before - 0.1 * grads[2]); /* measured, not clipped */
    CHECK(fn_model_nonfinite_node(m) == -1);
    /* Tensor 3 is 2.bias, of node 2 (the third in execution order). */
    fn_tensor_info bias;
    CHECK(fn_model_tensor_info(m, 3, &bias) == FN_OK && strcmp(bias.name, "2.bias") == 0);
    grads[bias.offset + 1] = -INFINITY;
    double *momentum = fn_model_optimizer_state(m, 0);
    double momentum_before = momentum[bias.offset + 1];
    EXPECT_ERROR(fn_model_step(m), FN_ENUMERIC, "layer '2' (linear), tensor '2.bias', element 1");
    CHECK(fn_model_nonfinite_node(m) == 2 && fn_model_optimizer_steps(m) == 1);
    CHECK(params[2] == before - 0.1 * grads[2] && momentum[bias.offset + 1] == momentum_before);
    CHECK(isinf(fn_model_last_grad_norm(m)));
    grads[bias.offset + 1] = 0;
    CHECK(fn_model_step(m) == FN_OK && fn_model_nonfinite_node(m) == -1);
    fn_model_free(m);
}

/* ---------------------------------------------------------------- refusals */

static void test_errors(void) {
    fn_model *m = create();
    int *group = weights_and_biases(m);
    fn_param_group groups[2] = {{.lr = 0.1}, {.lr = 0.1}};
    EXPECT_ERROR(fn_model_set_param_groups(NULL, groups, 2, group), FN_EINVAL, "model is NULL");
    EXPECT_ERROR(fn_model_set_param_groups(m, groups, -1, group), FN_EINVAL, "n_groups");
    EXPECT_ERROR(fn_model_set_param_groups(m, NULL, 2, group), FN_EINVAL, "groups is NULL");
    EXPECT_ERROR(fn_model_set_param_groups(m, groups, 2, NULL), FN_EINVAL, "group_of_tensor");
    group[2] = 2;
    EXPECT_ERROR(fn_model_set_param_groups(m, groups, 2, group), FN_EINVAL, "is given group 2");
    group[2] = 0;
    fn_param_group bad[] = {{.lr = -1}, {.lr = NAN}, {.weight_decay = -0.1},
                            {.l1 = INFINITY}, {.max_norm = -2}};
    const char *words[] = {"lr must be", "lr must be", "weight_decay", "l1", "max_norm"};
    for (int i = 0; i < 5; i++)
        EXPECT_ERROR(fn_model_set_param_groups(m, &bad[i], 1, NULL), FN_EINVAL, words[i]);
    CHECK(fn_model_param_group_count(m) == 0); /* refused: nothing set */
    fn_param_group out;
    EXPECT_ERROR(fn_model_get_param_group(m, 0, &out), FN_EINVAL, "out of range");
    EXPECT_ERROR(fn_model_get_param_group(NULL, 0, &out), FN_EINVAL, "NULL");
    CHECK(fn_model_last_grad_norm(NULL) == -1 && fn_model_group_lr(NULL, 0) == 0);

    fn_optimizer bad_opts[] = {
        {.kind = FN_OPT_ADAGRAD, .lr = 0.1, .lr_decay = -1},
        {.kind = FN_OPT_ADAGRAD, .lr = 0.1, .initial_accumulator_value = NAN},
        {.kind = FN_OPT_ADAGRAD, .lr = 0.1, .eps = -1},
        {.kind = FN_OPT_RMSPROP, .lr = 0.1, .alpha = 1.5},
        {.kind = FN_OPT_RMSPROP, .lr = 0.1, .alpha = 0.9, .momentum = -1},
        {.kind = FN_OPT_SGD, .lr = 0.1, .clip_grad_norm = -1},
        {.kind = FN_OPT_SGD, .lr = 0.1, .clip_grad_norm = NAN},
        {.kind = FN_OPT_SGD, .lr = 0.1, .clip_grad_value = INFINITY},
        {.kind = (fn_optimizer_kind)5, .lr = 0.1},
    };
    const char *opt_words[] = {"lr_decay", "initial_accumulator_value", "eps", "alpha",
                               "momentum", "clip_grad_norm", "clip_grad_norm",
                               "clip_grad_value", "unknown kind"};
    for (int i = 0; i < 9; i++)
        EXPECT_ERROR(fn_model_set_optimizer(m, &bad_opts[i]), FN_EINVAL, opt_words[i]);
    free(group);
    fn_model_free(m);
}

int main(void) {
    test_groups_and_schedule();
    test_state_slots();
    test_max_norm();
    test_clipping();
    test_check_finite();
    test_errors();
    return check_report();
}

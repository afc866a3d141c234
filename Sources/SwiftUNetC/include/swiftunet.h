/*
 * swiftunet.h — the C interface of libSwiftUNetC, the SwiftUNet diffusion U-Net.
 *
 * Conventions
 *   - Every function that can fail returns an int32_t status: SWIFTUNET_OK (0)
 *     or one of the error codes below. On failure, swiftunet_last_error()
 *     returns a message for the calling thread that names the bad argument.
 *     No input reachable through this interface makes the library abort.
 *   - Tensors are float32, C-contiguous, NCHW. The library never keeps a
 *     pointer that the caller passed in beyond the call.
 *   - Models are reference counted. swiftunet_model_create returns a handle
 *     holding one reference; swiftunet_model_release drops one and frees the
 *     model when none remain. A thread that uses a handle while another may
 *     release it should hold its own reference (swiftunet_model_retain).
 *   - All functions may be called from any thread. Calls on one model from
 *     several threads at once are safe and give the results of sequential
 *     calls; parameter updates wait for running forwards to finish.
 */
#ifndef SWIFTUNET_H
#define SWIFTUNET_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SWIFTUNET_ABI_VERSION 1

enum {
    SWIFTUNET_OK = 0,
    SWIFTUNET_ERR_ARGUMENT = 1,    /* an argument is invalid; the message says which */
    SWIFTUNET_ERR_MEMORY = 2,      /* memory could not be allocated (or would be absurdly large) */
    SWIFTUNET_ERR_INTERRUPTED = 3, /* a long call was stopped by its callback */
    SWIFTUNET_ERR_INTERNAL = 4     /* a bug: please report it with the message */
};

typedef struct swiftunet_model swiftunet_model;

/* The message of the last failed call on this thread ("" when none). The
 * pointer stays valid until the next call into the library on this thread. */
const char *swiftunet_last_error(void);

/* SWIFTUNET_ABI_VERSION of the compiled library. */
int32_t swiftunet_abi_version(void);

/* A static description of the build as "key=value" pairs, e.g.
 * "arch=x86_64 variant=native target-cpu=native isa=avx512 blocks=simd16-8x32". */
const char *swiftunet_build_info(void);

/* Worker threads used by every model (>= 1). The default is the number of CPUs
 * available to the process, or SWIFTUNET_NUM_THREADS when that is set. */
int32_t swiftunet_set_num_threads(int64_t n);
int64_t swiftunet_get_num_threads(void);

/* --- models ------------------------------------------------------------- */

/* Creates DiffusionModel(image_size, channels, hidden_dims, time_dim) with
 * PyTorch's default initialisation drawn from the seeded SplitMix64 stream
 * described in the project's docs. *out_model receives one reference. */
int32_t swiftunet_model_create(int64_t image_size, int64_t channels,
                               const int64_t *hidden_dims, int64_t n_hidden_dims,
                               int64_t time_dim, uint64_t seed,
                               swiftunet_model **out_model);

void swiftunet_model_retain(swiftunet_model *model);
void swiftunet_model_release(swiftunet_model *model);

/* The configuration. hidden_dims receives at most hidden_dims_capacity values;
 * *n_hidden_dims always receives the true count. Any output may be NULL. */
int32_t swiftunet_model_config(const swiftunet_model *model, int64_t *image_size,
                               int64_t *channels, int64_t *time_dim,
                               int64_t *hidden_dims, int64_t hidden_dims_capacity,
                               int64_t *n_hidden_dims);

/* Number of named parameter tensors (the state_dict's length). */
int64_t swiftunet_model_param_count(const swiftunet_model *model);

/* Name, rank (1, 2 or 4), shape and element count of parameter `index`, in
 * state_dict order. *name points into the model and lives as long as it. */
int32_t swiftunet_model_param_info(const swiftunet_model *model, int64_t index,
                                   const char **name, int64_t *ndim,
                                   int64_t shape[4], int64_t *numel);

/* Copies parameter `index` into dst, which holds `numel` floats. */
int32_t swiftunet_model_get_param(const swiftunet_model *model, int64_t index,
                                  float *dst, int64_t numel);

/* Replaces every parameter at once: sources[i] points at the numel(i) floats
 * of parameter i (state_dict order); n must equal param_count. Values must be
 * finite. Either all parameters change or none do. */
int32_t swiftunet_model_set_params(swiftunet_model *model,
                                   const float *const *sources, int64_t n);

/* eps = model(x, t): x [batch, channels, height, width], timesteps [batch]
 * (each in [0, 2^53]), out has the shape of x. height and width must be
 * positive multiples of 2^L. batch may be 0. x and out must not overlap. */
int32_t swiftunet_model_forward(swiftunet_model *model, const float *x,
                                int64_t batch, int64_t channels,
                                int64_t height, int64_t width,
                                const int64_t *timesteps, float *out);

/* Address of the x buffer that the last forward on this thread read, for
 * tests that check nothing was copied on the way in. */
const void *swiftunet_debug_last_input(void);

/* --- sampling ------------------------------------------------------------
 * Noise schedules, q_sample, the seeded Gaussian generator and the DDIM /
 * DDPM loops of docs/model.md section 3; docs/sampling.md gives every formula. A
 * schedule is passed as its betas (num_timesteps doubles, each in (0, 1));
 * alphas_cumprod is always their running product in float64. */

/* Cosine (Nichol & Dhariwal) and linear schedules: fills betas and
 * alphas_cumprod (num_timesteps doubles each; either may be NULL). */
int32_t swiftunet_schedule_cosine(int64_t num_timesteps, double *betas,
                                  double *alphas_cumprod);
int32_t swiftunet_schedule_linear(int64_t num_timesteps, double beta_start,
                                  double beta_end, double *betas,
                                  double *alphas_cumprod);

/* Validates betas and writes alphas_cumprod (may be NULL: validation only). */
int32_t swiftunet_schedule_from_betas(const double *betas, int64_t num_timesteps,
                                      double *alphas_cumprod);

/* The `steps` timesteps a DDIM run visits, in order (descending):
 * round(i*(T-1)/(S-1)) for i = S-1 .. 0, exact, ties to even; steps = 1 gives
 * the single timestep T-1. 1 <= steps <= num_timesteps. */
int32_t swiftunet_ddim_timesteps(int64_t num_timesteps, int64_t steps, int64_t *out);

/* out = sqrt(ab[t_b]) * x0 + sqrt(1 - ab[t_b]) * noise, image b of `batch`
 * having per_image values and timestep t[b] in [0, num_timesteps); float64
 * arithmetic, one rounding to float32. out may alias x0 or noise. */
int32_t swiftunet_q_sample(const double *betas, int64_t num_timesteps,
                           const float *x0, const int64_t *t, const float *noise,
                           int64_t batch, int64_t per_image, float *out);

/* `count` standard normals from the seeded generator (SplitMix64 + Box-Muller,
 * docs/sampling.md), in the order a sampling run uses them. */
int32_t swiftunet_randn(uint64_t seed, float *out, int64_t count);

/* Normals first .. first + count - 1 of the tensor swiftunet_randn(seed, ...)
 * would fill (first >= 0): rows of a large tensor drawn on their own. */
int32_t swiftunet_randn_at(uint64_t seed, int64_t first, float *out, int64_t count);

enum {
    SWIFTUNET_SAMPLER_DDIM = 0,
    SWIFTUNET_SAMPLER_DDPM = 1,
    SWIFTUNET_SAMPLER_DPMPP_2M = 2 /* DPM-Solver++ 2M (data prediction, multistep) */
};

/* How the timesteps of a run of S steps are spread (diffusers' timestep_spacing). */
enum {
    SWIFTUNET_SPACING_LINSPACE = 0, /* round(i*(T-1)/(S-1)), i = S-1 .. 0 (the default) */
    SWIFTUNET_SPACING_LEADING = 1,  /* k*(T/S) (integer division), k = S-1 .. 0 */
    SWIFTUNET_SPACING_TRAILING = 2  /* round(k*T/S) - 1, k = S .. 1 */
};

/* The `steps` timesteps (descending) of a run under `spacing`. */
int32_t swiftunet_schedule_timesteps(int64_t num_timesteps, int64_t steps,
                                     int32_t spacing, int64_t *out);

/* Called by long loops between steps: before the first (done = 0) and after
 * each one (done = 1 .. total), on the thread that made the call. A nonzero
 * return stops the loop and the call returns SWIFTUNET_ERR_INTERRUPTED. */
typedef int32_t (*swiftunet_progress_fn)(void *context, int64_t done, int64_t total);

/* Generates n images [n, channels, height, width] into out. sampler is
 * SWIFTUNET_SAMPLER_DDIM (steps in [1, num_timesteps], eta in [0, 1]) or
 * SWIFTUNET_SAMPLER_DDPM (all num_timesteps steps; steps and eta ignored).
 * clip != 0 clips the predicted x0 to [-1, 1]. x_T, when not NULL, is the
 * start (same shape as out; it may be out itself); otherwise x_T is drawn from
 * the generator seeded with `seed`, which then also gives each step's noise.
 * height and width must be positive multiples of 2^L. progress may be NULL.
 * After SWIFTUNET_ERR_INTERRUPTED, out holds a partly denoised state and the
 * model is unchanged and usable. */
int32_t swiftunet_model_sample(swiftunet_model *model, const double *betas,
                               int64_t num_timesteps, int32_t sampler,
                               int64_t steps, double eta, int32_t clip,
                               uint64_t seed, const float *x_T, int64_t n,
                               int64_t height, int64_t width, float *out,
                               swiftunet_progress_fn progress, void *context);

/* swiftunet_model_sample with every option: sampler may also be
 * SWIFTUNET_SAMPLER_DPMPP_2M (steps in [1, num_timesteps]; karras != 0 uses
 * Karras sigmas, then spacing must be LINSPACE); spacing is a
 * SWIFTUNET_SPACING_* value; the images are images first_image ..
 * first_image + n - 1 of the seed's per-image stream, so runs over
 * consecutive ranges concatenate to one run over all of them. timesteps,
 * when not NULL, holds `steps` int64 timesteps visited in place of the
 * spacing's: strictly decreasing, each in [0, num_timesteps), for DDIM or
 * DPM-Solver++ without Karras sigmas, with spacing LINSPACE.
 * swiftunet_model_sample is this with spacing LINSPACE, timesteps NULL,
 * karras 0, first_image 0. */
int32_t swiftunet_model_sample_images(swiftunet_model *model, const double *betas,
                                      int64_t num_timesteps, int32_t sampler,
                                      int64_t steps, double eta, int32_t spacing,
                                      const int64_t *timesteps,
                                      int32_t karras, int32_t clip, uint64_t seed,
                                      int64_t first_image, const float *x_T, int64_t n,
                                      int64_t height, int64_t width, float *out,
                                      swiftunet_progress_fn progress, void *context);

/* A scheduler: the sampler of swiftunet_model_sample_images driven one step
 * at a time (the sampling loop itself runs these steps). It keeps state
 * between steps (the step index; DPM-Solver++'s previous x0), under a lock. */
typedef struct swiftunet_scheduler swiftunet_scheduler;

/* timesteps: as in swiftunet_model_sample_images (NULL for the spacing's). */
int32_t swiftunet_scheduler_create(const double *betas, int64_t num_timesteps,
                                   int32_t sampler, int64_t steps, double eta,
                                   int32_t spacing, const int64_t *timesteps,
                                   int32_t karras, int32_t clip,
                                   swiftunet_scheduler **out_scheduler);
void swiftunet_scheduler_release(swiftunet_scheduler *scheduler);
/* Number of steps (-1 for NULL). */
int64_t swiftunet_scheduler_num_steps(const swiftunet_scheduler *scheduler);
/* The timesteps (int64) and the alpha_bar each step's update uses (double),
 * num_steps values each; either may be NULL. */
int32_t swiftunet_scheduler_plan(const swiftunet_scheduler *scheduler, int64_t *timesteps,
                                 double *alpha_bars);
/* The index of the next step (num_steps when all are done; -1 for NULL). */
int64_t swiftunet_scheduler_step_index(const swiftunet_scheduler *scheduler);
int32_t swiftunet_scheduler_reset(swiftunet_scheduler *scheduler);

enum {
    SWIFTUNET_NOISE_NONE = 0,   /* a step that adds noise fails */
    SWIFTUNET_NOISE_GIVEN = 1,  /* noise holds batch * per_image normals */
    SWIFTUNET_NOISE_STREAM = 2  /* the stream of (seed, first_image), as sampling draws it */
};

/* One step: out = step(x at timestep t, eps), batch images of per_image
 * values. t must be the next timestep (or the first one: a new trajectory).
 * out may be x, and must not overlap eps or noise. */
int32_t swiftunet_scheduler_step(swiftunet_scheduler *scheduler, int64_t t,
                                 const float *eps, const float *x, int64_t batch,
                                 int64_t per_image, int32_t noise_kind,
                                 const float *noise, uint64_t seed,
                                 int64_t first_image, float *out);


/* --- training ------------------------------------------------------------
 * The flat parameter layout: every parameter in state_dict order, each
 * C-contiguous, one after another (swiftunet_model_param_total floats in
 * all). Gradients, Adam moments and EMA weights use this layout. */

/* Sum of numel over all parameters. */
int64_t swiftunet_model_param_total(const swiftunet_model *model);

/* loss = mean((model(x, t) - target)^2) over every element (PyTorch's
 * mse_loss, reduction "mean") and its gradient for every parameter.
 * x and target [batch, channels, height, width] (batch >= 1), timesteps as
 * for forward. *loss receives the loss (computed in float64 from the float32
 * prediction); grads receives grads_count == param_total floats in the flat
 * layout. The model's weights are not changed. The result is the same at
 * every thread count, bit for bit. */
int32_t swiftunet_model_loss_and_grad(swiftunet_model *model, const float *x,
                                      int64_t batch, int64_t channels,
                                      int64_t height, int64_t width,
                                      const int64_t *timesteps, const float *target,
                                      double *loss, float *grads, int64_t grads_count);

/* A trainer: AdamW (PyTorch's formulas, decoupled weight decay), optional
 * clipping of the gradient's global norm, and an EMA of the weights, for one
 * model, over the noise schedule given by its betas. The trainer holds a
 * reference to the model and updates its weights in place. */
typedef struct swiftunet_trainer swiftunet_trainer;

/* lr > 0, 0 <= beta1 < 1, 0 <= beta2 < 1, eps > 0, weight_decay >= 0,
 * grad_clip > 0 clips by global norm (0: no clipping), 0 <= ema_decay <= 1.
 * The EMA starts equal to the model's weights, the moments at zero, the step
 * count at 0. *out_trainer receives one reference. */
int32_t swiftunet_trainer_create(swiftunet_model *model, const double *betas,
                                 int64_t num_timesteps, double lr, double beta1,
                                 double beta2, double eps, double weight_decay,
                                 double grad_clip, double ema_decay, uint64_t seed,
                                 swiftunet_trainer **out_trainer);
void swiftunet_trainer_retain(swiftunet_trainer *trainer);
void swiftunet_trainer_release(swiftunet_trainer *trainer);

/* One training step on clean images x0 [batch, channels, height, width]
 * (batch >= 1): t and noise drawn as swiftunet_trainer_draw describes for the
 * current step count, x_t = q_sample(x0, t, noise), loss = mse(model(x_t, t),
 * noise), backward, clip, AdamW, EMA, step count + 1. *loss receives the
 * loss before the update. On any failure (including a non-finite loss or
 * gradient) nothing changes: weights, moments, EMA and step count. */
int32_t swiftunet_trainer_step(swiftunet_trainer *trainer, const float *x0,
                               int64_t batch, int64_t channels, int64_t height,
                               int64_t width, double *loss);

/* Steps taken so far (restored by set_state). */
int64_t swiftunet_trainer_step_count(const swiftunet_trainer *trainer);

/* The t [batch] and noise [batch * per_image] that the step with 0-based
 * index `step` of a trainer seeded with `seed` uses: a SplitMix64 stream
 * seeded with mix = SplitMix64(seed ^ (step * 0xD1B54A32D192ED03)).next();
 * t[b] = high 64 bits of (next() * num_timesteps) for b in order, then the
 * noise from the Gaussian generator (docs/sampling.md) continuing the same
 * SplitMix64 stream. */
int32_t swiftunet_trainer_draw(uint64_t seed, int64_t step, int64_t num_timesteps,
                               int64_t batch, int64_t per_image,
                               int64_t *t, float *noise);

enum {
    SWIFTUNET_STATE_EMA = 0,     /* the EMA weights */
    SWIFTUNET_STATE_ADAM_M = 1,  /* AdamW's first moments */
    SWIFTUNET_STATE_ADAM_V = 2   /* AdamW's second moments */
};

/* Copies one state tensor (param_total floats, flat layout) into dst. */
int32_t swiftunet_trainer_get_state(const swiftunet_trainer *trainer, int32_t which,
                                    float *dst, int64_t count);

/* Restores a checkpoint's EMA, moments (count == param_total floats each,
 * finite; v >= 0) and step count (>= 0). The model's weights are restored
 * separately with swiftunet_model_set_params. All or nothing. */
int32_t swiftunet_trainer_set_state(swiftunet_trainer *trainer, const float *ema,
                                    const float *adam_m, const float *adam_v,
                                    int64_t count, int64_t step_count);

#ifdef __cplusplus
}
#endif

#endif /* SWIFTUNET_H */

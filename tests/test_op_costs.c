// bench's cost model (bench/op_timer.c): the FLOPs and bytes it counts for one
// training step of a one-layer model, against values worked out here by hand
// from the shapes, so the table bench_train prints beside each op's time (and
// its floor on an H100 / H200) rests on checked arithmetic.
#include "test_util.h"

#include "bench/op_timer.h"
#include "model/model.h"

enum { B = 2, T = 8 };

// One forward + backward of the `tiny` preset cut to one layer, LoRA r 4 on
// all seven projections, no dropout, through the timed CPU backend.
static void run_one_step(LlamaConfig *config, int *r) {
    static Ops timed;
    timed = op_timer_wrap(ops_cpu());
    ModelOptions options = {.ops = &timed, .max_batch = B, .max_seq_len = T, .lm_head_chunk = 1024, .seed = 1,
                            .lora = {.r = 4, .alpha = 8}};
    for (int t = 0; t < LORA_TARGET_COUNT; t++) options.lora.targets[t] = true;
    Error err;
    assert_true(llama_config_preset("tiny", &options.config, &err));
    options.config.n_layers = 1;
    Model *model = model_create(&options, &err);
    if (!model) fail_msg("model_create: %s", err.message);
    assert_true(model_init_random_base(model, 1, &err));
    int32_t tokens[B * T], targets[B * T];
    for (int i = 0; i < B * T; i++) tokens[i] = 1 + i % 50, targets[i] = 2 + i % 40;
    Batch batch = {.B = B, .T = T, .tokens = tokens, .targets = targets};
    StepOptions step = {.grad_scale = 1.0f / (B * T), .train = true, .dropout_seed = 1};
    op_timer_reset();
    if (!model_step(model, &batch, &step, &err)) fail_msg("model_step: %s", err.message);
    double loss;
    assert_true(model_loss_sum(model, &loss, &err));
    *config = options.config;
    *r = options.lora.r;
    model_destroy(model);
}

static OpTotals totals_of(const char *op) {
    OpTotals totals;
    assert_true(op_timer_totals(op, &totals));
    return totals;
}

// GEMM FLOPs of the step. A linear in -> out with LoRA (A: r x in, B: out x r)
// over N tokens, per multiply-add 2 FLOPs:
//   forward   x W^T: N in out;  x A^T: N in r;  (x A^T) B^T: N r out
//   backward  dx = dy W: N out in;  dB = dy^T (x A^T): N out r;  dh = dy B: N out r;
//             dA = dh^T x: N r in;  dx += dh A: N r in
// so 2 N (2 in out + 3 r (in + out)) per linear, and the frozen lm_head
// 2 N (2 C V) (forward and dx). The first layer's q, k, v input gradients are
// left out (2 N (out in + r in) each): in a text batch they would reach only the
// frozen embedding, and the model does not compute them.
static double step_gemm_flops(const LlamaConfig *c, int r) {
    double N = B * T, C = c->hidden_size, I = c->intermediate_size, V = c->vocab_size;
    double q = c->n_heads * c->head_dim, kv = c->n_kv_heads * c->head_dim;
    double shapes[7][2] = {{C, q}, {C, kv}, {C, kv}, {q, C}, {C, I}, {C, I}, {I, C}};
    double flops = 2 * N * 2 * C * V;
    for (int i = 0; i < 7; i++) {
        double in = shapes[i][0], out = shapes[i][1];
        flops += 2 * N * (2 * in * out + 3 * r * (in + out));
        if (i < 3) flops -= 2 * N * (out * in + r * in);
    }
    return flops;
}

static void test_gemm_flops_of_one_layer(void **state) {
    LlamaConfig c;
    int r;
    run_one_step(&c, &r);
    assert_int_equal(c.hidden_size, 32);  // the numbers below are for tiny: C 32, I 64, V 262, 4 / 2 heads of 8
    assert_int_equal(c.intermediate_size, 64);
    assert_int_equal(c.vocab_size, 262);
    double counted = totals_of("matmul").flops + totals_of("matmul_weight_grad").flops;
    // By hand, N = 16, r = 4: lm_head 2*16*2*32*262 = 536,576; q, o (32 x 32):
    // 2*16*(2*1024 + 3*4*64) = 90,112 each; k, v (32 -> 16): 2*16*(2*512 + 3*4*48) = 51,200 each;
    // gate, up, down (32 x 64): 2*16*(2*2048 + 3*4*96) = 167,936 each: 1,323,008; less the first
    // layer's q, k, v input gradients 2*16*(1024 + 128) = 36,864 and 2*16*(512 + 128) = 20,480 twice:
    // in all 1,245,184.
    assert_true(step_gemm_flops(&c, r) == 1245184.0);
    print_message("GEMM FLOPs of the step: counted %.0f, by hand %.0f\n", counted, step_gemm_flops(&c, r));
    assert_true(counted == step_gemm_flops(&c, r));
    // The LoRA weight gradients alone (matmul_weight_grad): dB 2 N out r + dA 2 N r in per linear
    // = 2*16*4*(64 + 64 + 48 + 48 + 96 + 96 + 96) = 65,536.
    assert_true(totals_of("matmul_weight_grad").flops == 65536.0);
}

static void test_attention_costs_of_one_layer(void **state) {
    LlamaConfig c;
    int r;
    run_one_step(&c, &r);
    // B 2 rows of T 8 tokens, 4 query heads, 2 kv heads, head_dim 8: 2 * 4 * (8 * 9 / 2) = 288
    // causal (query, key) pairs; q.k and p.v are 2 * 8 FLOPs each: 288 * 32 = 9,216 forward;
    // the backward's five products 288 * 80 = 23,040. RoPE is fused into attention: rotating q
    // (16 tokens x 4 heads x 8) and k (16 x 2 x 8) is 3 * 768 = 2,304 FLOPs, once in the forward
    // (11,520) and twice in the backward (q, k again and dq, dk back: 27,648). fp32 storage
    // (E = 4): the forward reads q (2*8*32 floats), k, v (2*8*16 each), writes out (2*8*32) and
    // lse (2*4*8), and reads positions (16 int32) and inv_freq (4 floats):
    // 4 * (512 + 256 + 256 + 512 + 64 + 16 + 4) = 6,480 bytes.
    OpTotals forward = totals_of("attention_forward"), backward = totals_of("attention_backward");
    assert_int_equal(forward.calls, 1);
    assert_true(forward.flops == 11520.0);
    assert_true(backward.flops == 27648.0);
    assert_true(forward.bytes == 6480.0);
    // The backward reads q, out, dout (512 floats each), k, v (256 each), lse (64), positions and
    // inv_freq (20), reads and writes dq (512), dk, dv (256 each):
    // 4 * (1536 + 512 + 64 + 20 + 1024 + 1024) = 16,720 bytes.
    assert_true(backward.bytes == 16720.0);
    // No separate rope pass is left in the step.
    assert_int_equal(totals_of("rope_forward").calls + totals_of("rope_backward").calls, 0);
}

static void test_device_peaks(void **state) {
    assert_non_null(device_peak_named("NVIDIA H100 80GB HBM3"));
    assert_ptr_equal(device_peak_named("NVIDIA H200"), &DEVICE_H200);
    assert_null(device_peak_named("NVIDIA GeForce RTX 4090"));
    assert_true(DEVICE_H100.flops == 989.4e12 && DEVICE_H100.bytes_per_s == 3.35e12);
    assert_true(DEVICE_H200.bytes_per_s == 4.8e12);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gemm_flops_of_one_layer),
        cmocka_unit_test(test_attention_costs_of_one_layer),
        cmocka_unit_test(test_device_peaks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

// The op dispatch (kernels/dispatch.h), the tensor-metadata forms of the ragged ops,
// HeadSkipMask, the caching allocator, streams and the counted transfers.
//
// BackendOpsTest runs every op once per device that is built and present and compares
// it with the CPU body, in the style of ggml's test-backend-ops; a device without a body
// for an op reports it and skips that op. Only the CPU is present here; the CUDA cases
// skip with the reason.
#include <sys/mman.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/device_memory.h"
#include "kernels/gated_delta_net.h"
#include "kernels/ops.h"
#include "kernels/stream.h"
#include "tests/unit/tensor_test_util.h"

namespace sluice::kernels {
namespace {

using testing::BitEqual;
using testing::CopyTo;
using testing::Make;
using testing::MakeI32;
using testing::Randn;

// ---------------------------------------------------------------------------------------
// Dispatch: a device without a body refuses before touching any data.

// Memory that faults on any access: a tensor over it, tagged with a device, proves that
// the op reached no load or store on it.
class NoAccessMemory {
 public:
  explicit NoAccessMemory(size_t bytes) : bytes_(bytes) {
    base_ = mmap(nullptr, bytes_, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    EXPECT_NE(base_, MAP_FAILED);
  }
  ~NoAccessMemory() { munmap(base_, bytes_); }
  // A tensor of `shape` at byte `offset`, tagged as living on `device`.
  Tensor At(size_t offset, std::vector<int64_t> shape, DType dtype, Device device) const {
    return Tensor::FromBuffer(Buffer::Borrow(base_, bytes_, device, nullptr), offset,
                              std::move(shape), dtype);
  }

 private:
  void* base_;
  size_t bytes_;
};

// Every op of ops.h and gated_delta_net.h with valid shapes on unreadable memory tagged
// `device`. Each entry: the op's name and a call.
std::vector<std::pair<std::string, std::function<absl::Status()>>> AllOpsOn(
    const NoAccessMemory& mem, Device device) {
  size_t next = 0;
  auto t = [&](std::vector<int64_t> shape, DType dtype = DType::kF32) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    Tensor out = mem.At(next, std::move(shape), dtype, device);
    next += (static_cast<size_t>(n) * DTypeSize(dtype) + 63) / 64 * 64;
    return out;
  };
  const int64_t T = 4, H = 8, S = 2;
  // Tensors are captured by value; each call makes its outputs' pointers.
  Tensor x = t({T, H}), x2 = t({T, H}), w = t({H}), ids = t({T}, DType::kI32);
  Tensor table = t({16, H}), gate_up = t({T, 2 * H}), q3 = t({T, 2, 4}), out3 = t({T, 2, 4});
  Tensor cos_sin = t({32, 4}), gate = t({T, 2}), logits = t({T, 6});
  Tensor experts = t({T, 2}, DType::kI32), weights = t({T, 2}), row_k = t({T}, DType::kI32);
  Tensor rows = t({T}, DType::kI32), scale = t({T}), means = t({T, 2}), floors = t({T});
  Tensor mask = t({T, 2}, DType::kI32), kc = t({4, 4, 1, 4}), vc = t({4, 4, 1, 4});
  Tensor slots = t({T}, DType::kI32), qs = t({S + 1}, DType::kI32), cl = t({S}, DType::kI32);
  Tensor bt = t({S, 3}, DType::kI32), skip = t({T, 2}, DType::kI32);
  LinearAttentionBatch lab{t({S}, DType::kI32), t({S}, DType::kI32), t({S}, DType::kI32),
                           t({S}, DType::kI32)};
  Tensor cw = t({H, 4}), conv_state = t({S, H, 3}), y = t({T, H});
  Tensor dq = t({T, 1, 4}), dk = t({T, 1, 4}), dv = t({T, 2, 4}), dg = t({T, 2}), db = t({T, 2});
  Tensor dstate = t({S, 2, 4, 4}), dout = t({T, 2, 4}), a_log = t({2}), dt_bias = t({2});
  Tensor g2 = t({T, 2}), beta2 = t({T, 2}), z3 = t({T, 2, 4}), w4 = t({4});
  Tensor weight2d = t({H, H});
  std::vector<std::pair<std::string, std::function<absl::Status()>>> ops;
  ops.emplace_back("Linear", [=] { return Linear::Create(weight2d, device).status(); });
  ops.emplace_back("ToF32", [=] { return ToF32(x, device).status(); });
  ops.emplace_back("ConcatRows", [=] { return ConcatRows({x, x2}).status(); });
  ops.emplace_back("EmbeddingLookup", [=]() mutable { return EmbeddingLookup(table, ids, &y); });
  ops.emplace_back("RmsNorm", [=]() mutable { return RmsNorm(x, w, 1e-6f, 0.f, &y); });
  ops.emplace_back("ApplyRotaryEmbedding",
                   [=]() mutable { return ApplyRotaryEmbedding(ids, cos_sin, 4, &q3); });
  ops.emplace_back("SiluMul", [=]() mutable { return SiluMul(gate_up, &y); });
  ops.emplace_back("CopyColumns", [=]() mutable { return CopyColumns(gate_up, 3, &y); });
  ops.emplace_back("SigmoidGateInPlace", [=]() mutable { return SigmoidGateInPlace(gate, &y); });
  ops.emplace_back("ClampInPlace", [=]() mutable { return ClampInPlace(1.f, &y); });
  ops.emplace_back("RouteTopK", [=]() mutable {
    return RouteTopK(logits, 2, true, &experts, &weights, row_k);
  });
  ops.emplace_back("ScaledScatterAdd",
                   [=]() mutable { return ScaledScatterAdd(x, rows, scale, &y); });
  ops.emplace_back("DeltaRuleGates", [=]() mutable {
    return DeltaRuleGates(gate, means, a_log, dt_bias, &g2, &beta2);
  });
  ops.emplace_back("SigmoidGroupMean", [=]() mutable { return SigmoidGroupMean(x, &means); });
  ops.emplace_back("AddBiasInPlace", [=]() mutable { return AddBiasInPlace(w, &y); });
  ops.emplace_back("AddInPlace", [=]() mutable { return AddInPlace(x, &y); });
  ops.emplace_back("FillConstant", [=]() mutable { return FillConstant(1.f, &y); });
  ops.emplace_back("HeadSkipMask", [=]() mutable { return HeadSkipMask(means, floors, &mask); });
  ops.emplace_back("GatherRows", [=]() mutable { return GatherRows(x, rows, &y); });
  Tensor kc2 = t({4, 4, 2, 4}), vc2 = t({4, 4, 2, 4});
  ops.emplace_back("WriteKvCache",
                   [=]() mutable { return WriteKvCache(q3, out3, slots, &kc2, &vc2); });
  ops.emplace_back("PagedAttention", [=]() mutable {
    return PagedAttention(q3, kc, vc, AttentionBatch{qs, cl, bt}, 0.5f, &out3, skip);
  });
  ops.emplace_back("CausalConv1dSilu",
                   [=]() mutable { return CausalConv1dSilu(x, cw, lab, &conv_state, &y); });
  ops.emplace_back("GatedDeltaRule", [=]() mutable {
    return GatedDeltaRule(dq, dk, dv, dg, db, lab, &dstate, &dout);
  });
  ops.emplace_back("GatedRmsNorm", [=]() mutable { return GatedRmsNorm(out3, z3, w4, 1e-6f, &dout); });
  ops.emplace_back("CopyStateSlots",
                   [=]() mutable { return CopyStateSlots({SlotCopy{0, 1}}, &dstate); });
  return ops;
}

// The ops that have a CUDA body (kernels/cuda/op_bodies_cuda.h): in a CUDA build they
// would run on the host memory tagged cuda below, so the dispatch tests leave them out.
bool HasCudaBody(const std::string& op) {
  return CudaBackendBuilt() && (op == "FillConstant" || op == "AddInPlace");
}

TEST(DispatchTest, DeviceWithoutBodyAnswersUnimplementedNamingOpAndDevice) {
  NoAccessMemory mem(1 << 20);
  for (auto& [name, call] : AllOpsOn(mem, Device::kCuda)) {
    if (HasCudaBody(name)) continue;
    absl::Status s = call();
    EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented) << name << ": " << s;
    EXPECT_NE(s.message().find(name + " has no cuda kernel yet"), std::string::npos)
        << name << ": " << s;
  }
}

TEST(DispatchTest, ChecksDoNotReadContentsSoGarbageMetadataStillGivesUnimplemented) {
  // None of these ops has a CUDA body yet, so this runs in CUDA builds too.
  // Host memory full of out-of-range ids, slots, rows, blocks and k's, tagged cuda: a
  // check that read them would answer OUT_OF_RANGE or INVALID_ARGUMENT.
  std::vector<int32_t> garbage(1 << 14, -123456);
  auto tag = [&](size_t offset, std::vector<int64_t> shape, DType dtype) {
    return Tensor::FromBuffer(Buffer::Borrow(garbage.data(), garbage.size() * 4, Device::kCuda,
                                             nullptr),
                              offset, std::move(shape), dtype);
  };
  Tensor ids = tag(0, {4}, DType::kI32);
  Tensor table = tag(4096, {16, 8}, DType::kF32);
  Tensor out = tag(8192, {4, 8}, DType::kF32);
  EXPECT_EQ(EmbeddingLookup(table, ids, &out).code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(GatherRows(table, ids, &out).code(), absl::StatusCode::kUnimplemented);
  Tensor scale = tag(12288, {4}, DType::kF32);
  Tensor y = tag(16384, {4, 8}, DType::kF32);
  EXPECT_EQ(ScaledScatterAdd(y, ids, scale, &out).code(), absl::StatusCode::kUnimplemented);
  Tensor logits = tag(20480, {4, 6}, DType::kF32);
  Tensor experts = tag(24576, {4, 2}, DType::kI32), weights = tag(28672, {4, 2}, DType::kF32);
  EXPECT_EQ(RouteTopK(logits, 2, true, &experts, &weights, ids).code(),
            absl::StatusCode::kUnimplemented);
  Tensor q = tag(32768, {4, 2, 4}, DType::kF32), o = tag(36864, {4, 2, 4}, DType::kF32);
  Tensor kc = tag(40960, {4, 4, 1, 4}, DType::kF32);
  AttentionBatch batch{tag(45056, {3}, DType::kI32), tag(45312, {2}, DType::kI32),
                       tag(45568, {2, 3}, DType::kI32)};
  EXPECT_EQ(PagedAttention(q, kc, kc, batch, 1.f, &o, ids.Reshape({2, 2}).value()).code(),
            absl::StatusCode::kInvalidArgument);  // head_skip has the wrong shape: a shape check
  EXPECT_EQ(PagedAttention(q, kc, kc, batch, 1.f, &o, tag(46080, {4, 2}, DType::kI32)).code(),
            absl::StatusCode::kUnimplemented);
  EXPECT_EQ(ApplyRotaryEmbedding(ids, table.Reshape({32, 4}).value(), 4, &q).code(),
            absl::StatusCode::kUnimplemented);
  LinearAttentionBatch seqs{tag(50000 & ~63, {2}, DType::kI32), tag(50176, {2}, DType::kI32),
                            tag(50432, {2}, DType::kI32), tag(50688, {2}, DType::kI32)};
  Tensor conv_state = tag(51200, {2, 8, 3}, DType::kF32), w = tag(53248, {8, 4}, DType::kF32);
  EXPECT_EQ(CausalConv1dSilu(out, w, seqs, &conv_state, &y).code(),
            absl::StatusCode::kUnimplemented);
  // The host-metadata forms off the CPU: UNIMPLEMENTED too, naming the op. In a CUDA
  // build they first upload the metadata, which needs a real GPU.
  if (CudaBackendBuilt()) return;
  std::vector<int32_t> blocks = {0};
  for (absl::Status s :
       {PagedAttention(q, kc, kc, {AttentionSequence{0, 4, 4, blocks.data()}}, 1.f, &o),
        RouteTopK(logits, 2, true, &experts, &weights, std::vector<int32_t>{1, 2, 2, 1}),
        CausalConv1dSilu(out, w, {LinearAttentionSequence{0, 4, 1, true}}, &conv_state, &y)}) {
    EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented) << s;
    EXPECT_TRUE(s.message().find("PagedAttention") != std::string::npos ||
                s.message().find("RouteTopK") != std::string::npos ||
                s.message().find("CausalConv1dSilu") != std::string::npos)
        << s;
  }
}

TEST(DispatchTest, ShapeChecksStillComeFirstOnEveryDevice) {
  NoAccessMemory mem(1 << 16);
  Tensor x = mem.At(0, {4, 8}, DType::kF32, Device::kCuda);
  Tensor w = mem.At(4096, {7}, DType::kF32, Device::kCuda);  // wrong length
  Tensor out = mem.At(8192, {4, 8}, DType::kF32, Device::kCuda);
  EXPECT_EQ(RmsNorm(x, w, 1e-6f, 0.f, &out).code(), absl::StatusCode::kInvalidArgument);
  Tensor cpu_w = *Tensor::Zeros({8}, DType::kF32);
  EXPECT_EQ(RmsNorm(x, cpu_w, 1e-6f, 0.f, &out).code(), absl::StatusCode::kInvalidArgument)
      << "tensors on two devices";
}

// ---------------------------------------------------------------------------------------
// Content checks belong to the CPU bodies; the codes and messages are the old ones.

TEST(CpuBodyChecksTest, ReportOutOfRangeContents) {
  Tensor table = Make(Randn(16 * 8, 1), {16, 8});
  Tensor out = *Tensor::Empty({2, 8}, DType::kF32);
  EXPECT_EQ(EmbeddingLookup(table, MakeI32({1, 16}, {2}), &out).code(),
            absl::StatusCode::kOutOfRange);
  EXPECT_EQ(GatherRows(table, MakeI32({-1, 0}, {2}), &out).code(), absl::StatusCode::kOutOfRange);
  Tensor acc = *Tensor::Zeros({3, 8}, DType::kF32);
  EXPECT_EQ(ScaledScatterAdd(out, MakeI32({0, 3}, {2}), Make({1.f, 1.f}, {2}), &acc).code(),
            absl::StatusCode::kOutOfRange);
  Tensor q = Make(Randn(2 * 2 * 4, 2), {2, 2, 4});
  Tensor cos_sin = Make(Randn(5 * 4, 3), {5, 4});
  EXPECT_EQ(ApplyRotaryEmbedding(MakeI32({0, 5}, {2}), cos_sin, 4, &q).code(),
            absl::StatusCode::kOutOfRange);
  Tensor kc = *Tensor::Zeros({2, 4, 1, 4}, DType::kF32), vc = kc;
  Tensor kv = Make(Randn(2 * 4, 4), {2, 1, 4});
  EXPECT_EQ(WriteKvCache(kv, kv, MakeI32({0, 8}, {2}), &kc, &vc).code(),
            absl::StatusCode::kOutOfRange);
  Tensor logits = Make(Randn(2 * 6, 5), {2, 6});
  Tensor experts = *Tensor::Empty({2, 3}, DType::kI32), weights = *Tensor::Empty({2, 3}, DType::kF32);
  EXPECT_EQ(RouteTopK(logits, 3, true, &experts, &weights, MakeI32({1, 0}, {2})).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RouteTopK(logits, 3, true, &experts, &weights, std::vector<int32_t>{4, 1}).code(),
            absl::StatusCode::kInvalidArgument);
  // Paged attention: a block id outside the cache, in both forms.
  Tensor pq = Make(Randn(2 * 2 * 4, 6), {2, 2, 4}), po = *Tensor::Empty({2, 2, 4}, DType::kF32);
  std::vector<int32_t> table_ids = {7};
  AttentionSequence seq{0, 2, 3, table_ids.data()};
  EXPECT_EQ(PagedAttention(pq, kc, vc, {seq}, 1.f, &po).code(), absl::StatusCode::kOutOfRange);
  AttentionBatch batch{MakeI32({0, 2}, {2}), MakeI32({3}, {1}), MakeI32({7}, {1, 1})};
  EXPECT_EQ(PagedAttention(pq, kc, vc, batch, 1.f, &po).code(), absl::StatusCode::kOutOfRange);
  // A context longer than its row of the block table, and a query longer than its context.
  AttentionBatch short_table{MakeI32({0, 2}, {2}), MakeI32({5}, {1}), MakeI32({0}, {1, 1})};
  EXPECT_EQ(PagedAttention(pq, kc, vc, short_table, 1.f, &po).code(),
            absl::StatusCode::kInvalidArgument);
  AttentionBatch long_query{MakeI32({0, 2}, {2}), MakeI32({1}, {1}), MakeI32({0}, {1, 1})};
  EXPECT_EQ(PagedAttention(pq, kc, vc, long_query, 1.f, &po).code(),
            absl::StatusCode::kInvalidArgument);
  // Linear attention: a slot outside the state, two sequences on one slot.
  Tensor x = Make(Randn(4 * 8, 7), {4, 8}), w = Make(Randn(8 * 4, 8), {8, 4});
  Tensor conv_state = *Tensor::Zeros({2, 8, 3}, DType::kF32), y = *Tensor::Empty({4, 8}, DType::kF32);
  LinearAttentionBatch bad_slot{MakeI32({0}, {1}), MakeI32({4}, {1}), MakeI32({2}, {1}),
                                MakeI32({1}, {1})};
  EXPECT_EQ(CausalConv1dSilu(x, w, bad_slot, &conv_state, &y).code(), absl::StatusCode::kOutOfRange);
  LinearAttentionBatch shared{MakeI32({0, 2}, {2}), MakeI32({2, 2}, {2}), MakeI32({1, 1}, {2}),
                              MakeI32({1, 1}, {2})};
  EXPECT_EQ(CausalConv1dSilu(x, w, shared, &conv_state, &y).code(),
            absl::StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------------------
// The tensor-metadata forms share the bodies of the host forms: same bits.

TEST(TensorMetadataTest, PagedAttentionBatchEqualsSequencesBitForBit) {
  const int64_t hq = 4, hkv = 2, d = 16, block = 4, blocks = 12;
  // Three sequences: a prefill of 5 on a context of 5, a decode on 9, a chunk of 3 on 7.
  const std::vector<int32_t> qlen = {5, 1, 3}, ctx = {5, 9, 7};
  const std::vector<std::vector<int32_t>> tables = {{3, 0}, {5, 1, 8}, {2, 11}};
  const int64_t tokens = 9;
  Tensor q = Make(Randn(tokens * hq * d, 11), {tokens, hq, d});
  Tensor kc = Make(Randn(blocks * block * hkv * d, 12), {blocks, block, hkv, d});
  Tensor vc = Make(Randn(blocks * block * hkv * d, 13), {blocks, block, hkv, d});
  std::vector<AttentionSequence> seqs;
  std::vector<int32_t> qs = {0}, padded(3 * 3, -1);
  for (int s = 0; s < 3; ++s) {
    seqs.push_back({qs.back(), qlen[s], ctx[s], tables[s].data()});
    qs.push_back(qs.back() + qlen[s]);
    std::copy(tables[s].begin(), tables[s].end(), padded.begin() + s * 3);
  }
  AttentionBatch batch{MakeI32(qs, {4}), MakeI32(ctx, {3}), MakeI32(padded, {3, 3})};
  std::vector<uint8_t> skip8(tokens * hq, 0);
  std::vector<int32_t> skip32(tokens * hq, 0);
  for (int64_t i = 0; i < tokens * hq; i += 3) skip8[i] = skip32[i] = 1;
  for (bool with_skip : {false, true}) {
    Tensor a = *Tensor::Empty({tokens, hq, d}, DType::kF32);
    Tensor b = *Tensor::Empty({tokens, hq, d}, DType::kF32);
    ASSERT_TRUE(PagedAttention(q, kc, vc, seqs, 0.25f, &a,
                               with_skip ? absl::Span<const uint8_t>(skip8)
                                         : absl::Span<const uint8_t>())
                    .ok());
    ASSERT_TRUE(PagedAttention(q, kc, vc, batch, 0.25f, &b,
                               with_skip ? MakeI32(skip32, {tokens, hq}) : Tensor())
                    .ok());
    EXPECT_TRUE(BitEqual(a, b)) << "with_skip=" << with_skip;
  }
}

TEST(TensorMetadataTest, RouteTopKRowKTensorEqualsSpanBitForBit) {
  const int64_t tokens = 7, num_experts = 10, k = 4;
  Tensor logits = Make(Randn(tokens * num_experts, 21), {tokens, num_experts});
  const std::vector<int32_t> row_k = {4, 1, 2, 3, 4, 2, 1};
  Tensor e1 = *Tensor::Empty({tokens, k}, DType::kI32), w1 = *Tensor::Empty({tokens, k}, DType::kF32);
  Tensor e2 = *Tensor::Empty({tokens, k}, DType::kI32), w2 = *Tensor::Empty({tokens, k}, DType::kF32);
  for (bool renormalize : {false, true}) {
    ASSERT_TRUE(RouteTopK(logits, k, renormalize, &e1, &w1, row_k).ok());
    ASSERT_TRUE(RouteTopK(logits, k, renormalize, &e2, &w2, MakeI32(row_k, {tokens})).ok());
    EXPECT_TRUE(BitEqual(e1, e2) && BitEqual(w1, w2));
    ASSERT_TRUE(RouteTopK(logits, k, renormalize, &e1, &w1).ok());
    ASSERT_TRUE(RouteTopK(logits, k, renormalize, &e2, &w2, Tensor()).ok());
    EXPECT_TRUE(BitEqual(e1, e2) && BitEqual(w1, w2));
  }
}

LinearAttentionBatch ToBatch(const std::vector<LinearAttentionSequence>& seqs) {
  std::vector<int32_t> start, length, slot, zero;
  for (const auto& s : seqs) {
    start.push_back(s.start);
    length.push_back(s.length);
    slot.push_back(s.state_slot);
    zero.push_back(s.zero_initial_state ? 1 : 0);
  }
  const int64_t n = static_cast<int64_t>(seqs.size());
  return {MakeI32(start, {n}), MakeI32(length, {n}), MakeI32(slot, {n}), MakeI32(zero, {n})};
}

TEST(TensorMetadataTest, LinearAttentionBatchEqualsSequencesBitForBit) {
  const int64_t tokens = 70, channels = 24, kernel = 4, slots = 4;
  // A fresh prefill of 66 (chunked path), a decode continuing slot 2, a fresh empty one.
  const std::vector<LinearAttentionSequence> seqs = {
      {0, 66, 1, true}, {66, 1, 2, false}, {67, 3, 0, false}, {70, 0, 3, true}};
  const LinearAttentionBatch batch = ToBatch(seqs);
  Tensor x = Make(Randn(tokens * channels, 31), {tokens, channels});
  Tensor w = Make(Randn(channels * kernel, 32), {channels, kernel});
  Tensor state0 = Make(Randn(slots * channels * (kernel - 1), 33), {slots, channels, kernel - 1});
  Tensor sa = CopyTo(state0, Device::kCpu), sb = CopyTo(state0, Device::kCpu);
  Tensor ya = *Tensor::Empty({tokens, channels}, DType::kF32);
  Tensor yb = *Tensor::Empty({tokens, channels}, DType::kF32);
  ASSERT_TRUE(CausalConv1dSilu(x, w, seqs, &sa, &ya).ok());
  ASSERT_TRUE(CausalConv1dSilu(x, w, batch, &sb, &yb).ok());
  EXPECT_TRUE(BitEqual(ya, yb) && BitEqual(sa, sb));

  const int64_t hk = 2, hv = 4, dk = 16, dv = 8;
  Tensor q = Make(Randn(tokens * hk * dk, 34), {tokens, hk, dk});
  Tensor k = Make(Randn(tokens * hk * dk, 35), {tokens, hk, dk});
  Tensor v = Make(Randn(tokens * hv * dv, 36), {tokens, hv, dv});
  std::vector<float> gv = Randn(tokens * hv, 37), bv = Randn(tokens * hv, 38);
  for (float& e : gv) e = -std::fabs(e) * 0.1f;
  for (float& e : bv) e = 1.f / (1.f + std::exp(-e));
  Tensor g = Make(gv, {tokens, hv}), beta = Make(bv, {tokens, hv});
  Tensor st0 = Make(Randn(slots * hv * dk * dv, 39, 0.1f), {slots, hv, dk, dv});
  for (GatedDeltaRuleMode mode : {GatedDeltaRuleMode::kAuto, GatedDeltaRuleMode::kRecurrent,
                                  GatedDeltaRuleMode::kChunked}) {
    Tensor ta = CopyTo(st0, Device::kCpu), tb = CopyTo(st0, Device::kCpu);
    Tensor oa = *Tensor::Empty({tokens, hv, dv}, DType::kF32);
    Tensor ob = *Tensor::Empty({tokens, hv, dv}, DType::kF32);
    ASSERT_TRUE(GatedDeltaRule(q, k, v, g, beta, seqs, &ta, &oa, mode).ok());
    ASSERT_TRUE(GatedDeltaRule(q, k, v, g, beta, batch, &tb, &ob, mode).ok());
    EXPECT_TRUE(BitEqual(oa, ob) && BitEqual(ta, tb)) << static_cast<int>(mode);
  }
}

// ---------------------------------------------------------------------------------------
// HeadSkipMask: the attention-gate floor rule of engine/model/attention_mixer.cc.

TEST(HeadSkipMaskTest, SkipsHeadsUnderTheRowFloorAndNothingWithoutAFloor) {
  const int64_t tokens = 5, heads = 3;
  const std::vector<float> means = {0.1f, 0.5f, 0.9f,  0.1f, 0.5f, 0.9f,  0.2f, 0.2f, 0.2f,
                                    0.f,  0.7f, NAN,   0.3f, 0.3f, 0.31f};
  const std::vector<float> floors = {0.6f, 0.f, 0.25f, -1.f, 0.3f};
  const std::vector<int32_t> expected = {1, 1, 0,  0, 0, 0,  1, 1, 1,  0, 0, 0,  0, 0, 0};
  Tensor mask = *Tensor::Empty({tokens, heads}, DType::kI32);
  ASSERT_TRUE(HeadSkipMask(Make(means, {tokens, heads}), Make(floors, {tokens}), &mask).ok());
  EXPECT_EQ(std::vector<int32_t>(mask.data<int32_t>(), mask.data<int32_t>() + tokens * heads),
            expected);
  Tensor wrong = *Tensor::Empty({tokens, heads}, DType::kF32);
  EXPECT_EQ(HeadSkipMask(Make(means, {tokens, heads}), Make(floors, {tokens}), &wrong).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(HeadSkipMaskTest, MaskDrivesPagedAttentionLikeTheHostFlags) {
  const int64_t tokens = 3, hq = 4, d = 8, block = 4;
  Tensor gate = Make(Randn(tokens * hq * d, 41), {tokens, hq * d});
  Tensor means = *Tensor::Empty({tokens, hq}, DType::kF32);
  ASSERT_TRUE(SigmoidGroupMean(gate, &means).ok());
  Tensor floors = Make({0.5f, 0.f, 0.52f}, {tokens});
  Tensor mask = *Tensor::Empty({tokens, hq}, DType::kI32);
  ASSERT_TRUE(HeadSkipMask(means, floors, &mask).ok());
  // The host rule, as the mixer applied it.
  std::vector<uint8_t> flags(tokens * hq, 0);
  for (int64_t t = 0; t < tokens; ++t) {
    const float f = floors.data<float>()[t];
    if (f <= 0.f) continue;
    for (int64_t h = 0; h < hq; ++h) flags[t * hq + h] = means.data<float>()[t * hq + h] < f;
  }
  Tensor q = Make(Randn(tokens * hq * d, 42), {tokens, hq, d});
  Tensor kc = Make(Randn(2 * block * 2 * d, 43), {2, block, 2, d});
  Tensor vc = Make(Randn(2 * block * 2 * d, 44), {2, block, 2, d});
  std::vector<int32_t> table = {1, 0};
  Tensor a = *Tensor::Empty({tokens, hq, d}, DType::kF32);
  Tensor b = *Tensor::Empty({tokens, hq, d}, DType::kF32);
  ASSERT_TRUE(PagedAttention(q, kc, vc, {AttentionSequence{0, 3, 6, table.data()}}, 0.3f, &a, flags).ok());
  AttentionBatch batch{MakeI32({0, 3}, {2}), MakeI32({6}, {1}), MakeI32(table, {1, 2})};
  ASSERT_TRUE(PagedAttention(q, kc, vc, batch, 0.3f, &b, mask).ok());
  EXPECT_TRUE(BitEqual(a, b));
}

// ---------------------------------------------------------------------------------------
// The caching allocator, streams and counted transfers.

TEST(DeviceMemoryTest, SizeClassesRoundUpWithBoundedSlack) {
  size_t previous = 0;
  for (size_t bytes = 1; bytes < (size_t{64} << 20); bytes = bytes * 5 / 4 + 1) {
    const size_t c = DeviceMemorySizeClass(bytes);
    EXPECT_GE(c, bytes);
    EXPECT_EQ(c % 64, 0u);
    EXPECT_GE(c, previous) << "classes grow with the size";
    if (bytes >= (64 << 10)) {
      EXPECT_LE(c, bytes + bytes / 4 + 64) << bytes;
    }
    previous = c;
  }
  // Sizes that differ by a little share a class.
  EXPECT_EQ(DeviceMemorySizeClass((3 << 20) + 1000), DeviceMemorySizeClass((3 << 20) + 5000));
}

TEST(DeviceMemoryTest, FreedLargeBlocksAreReusedAndCounted) {
  const size_t bytes = (5 << 20) + 12345;  // a class no other test allocates
  const DeviceMemoryStats s0 = GetDeviceMemoryStats(Device::kCpu);
  void* first = nullptr;
  {
    Tensor t = *Tensor::Empty({static_cast<int64_t>(bytes / 4)}, DType::kF32);
    first = t.raw();
  }
  const DeviceMemoryStats s1 = GetDeviceMemoryStats(Device::kCpu);
  EXPECT_EQ(s1.misses, s0.misses + 1);
  EXPECT_EQ(s1.cached_bytes, s0.cached_bytes + DeviceMemorySizeClass(bytes / 4 * 4));
  {
    // A slightly different size of the same class gets the same block back.
    Tensor t = *Tensor::Empty({static_cast<int64_t>(bytes / 4) + 100}, DType::kF32);
    EXPECT_EQ(t.raw(), first);
    const DeviceMemoryStats s2 = GetDeviceMemoryStats(Device::kCpu);
    EXPECT_EQ(s2.hits, s1.hits + 1);
    EXPECT_EQ(s2.cached_bytes, s0.cached_bytes);
  }
  ReleaseCachedDeviceMemory(Device::kCpu);
  EXPECT_EQ(GetDeviceMemoryStats(Device::kCpu).cached_bytes, 0u);
}

TEST(StreamTest, CpuStreamIsANoOp) {
  const Stream& s = CurrentStream(Device::kCpu);
  EXPECT_EQ(s.device(), Device::kCpu);
  EXPECT_EQ(s.native_handle(), nullptr);
  EXPECT_TRUE(s.Synchronize().ok());
  EXPECT_TRUE(Synchronize(Device::kCpu).ok());
  EXPECT_EQ(&CurrentStream(Device::kCpu), &s) << "one current stream per device";
}

TEST(StreamTest, CudaStreamSynchronisesWhenAGpuIsPresent) {
  const std::string reason = testing::DeviceUnavailableReason(Device::kCuda);
  if (!reason.empty()) GTEST_SKIP() << reason;
  EXPECT_EQ(CurrentStream(Device::kCuda).device(), Device::kCuda);
  EXPECT_NE(CurrentStream(Device::kCuda).native_handle(), nullptr);
  EXPECT_TRUE(Synchronize(Device::kCuda).ok());
}

TEST(TransferCountsTest, CountsEveryCallEvenOnTheCpu) {
  ResetTransferCounts();
  EXPECT_EQ(GetTransferCounts().device_to_host, 0u);
  Tensor t = *Tensor::Empty({6}, DType::kI32);
  const std::vector<int32_t> values = {1, 2, 3, 4, 5, 6};
  ASSERT_TRUE(CopyFromHost(values.data(), &t).ok());
  ASSERT_TRUE(CopyFromHost(absl::MakeConstSpan(values), &t).ok());
  std::vector<int32_t> back;
  ASSERT_TRUE(CopyToHost(t, &back).ok());
  EXPECT_EQ(back, values);
  TransferCounts c = GetTransferCounts();
  EXPECT_EQ(c.host_to_device, 2u);
  EXPECT_EQ(c.device_to_host, 1u);
  EXPECT_EQ(c.host_to_device_bytes, 48u);
  EXPECT_EQ(c.device_to_host_bytes, 24u);
  // Mismatched sizes are refused and not counted.
  std::vector<float> wrong_type;
  EXPECT_EQ(CopyToHost(Tensor(*Tensor::Empty({2}, DType::kBF16)), &wrong_type).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CopyFromHost(absl::MakeConstSpan(values).subspan(1), &t).code(),
            absl::StatusCode::kInvalidArgument);
  auto uploaded = TensorFromHost(absl::MakeConstSpan(values), {2, 3}, DType::kI32, Device::kCpu);
  ASSERT_TRUE(uploaded.ok());
  EXPECT_EQ(uploaded->data<int32_t>()[5], 6);
  c = GetTransferCounts();
  EXPECT_EQ(c.host_to_device, 3u);
  EXPECT_EQ(c.device_to_host, 1u);
  // Ops themselves never count: the CPU path of a ragged op moves no metadata.
  ResetTransferCounts();
  Tensor x = Make(Randn(4 * 8, 51), {4, 8}), y = *Tensor::Empty({4, 8}, DType::kF32);
  Tensor conv_state = *Tensor::Zeros({1, 8, 1}, DType::kF32);
  ASSERT_TRUE(CausalConv1dSilu(x, Make(Randn(8 * 2, 52), {8, 2}),
                               std::vector<LinearAttentionSequence>{{0, 4, 0, true}}, &conv_state,
                               &y)
                  .ok());
  c = GetTransferCounts();
  EXPECT_EQ(c.host_to_device + c.device_to_host, 0u);
}

// ---------------------------------------------------------------------------------------
// Every op on every device against the CPU body (ggml test-backend-ops style).

// Tolerance of a device's result against the CPU body's, per dtype: the CPU against
// itself must match exactly; another device may reorder f32 sums.
double Tolerance(Device device, DType dtype) {
  if (device == Device::kCpu) return 0.0;
  switch (dtype) {
    case DType::kF32:
      return 1e-5;
    case DType::kBF16:
    case DType::kF16:
      return 1e-2;
    case DType::kF8E4M3:
      return 1e-1;
    case DType::kI32:
    case DType::kI64:
    case DType::kI8:
    case DType::kWeightRowRefs:
      return 0.0;
  }
  return 0.0;
}

double MaxRelativeDiff(const Tensor& a, const Tensor& b) {
  double worst = 0.0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    double x, y;
    if (a.dtype() == DType::kI32) {
      x = a.data<int32_t>()[i];
      y = b.data<int32_t>()[i];
    } else {
      x = a.data<float>()[i];
      y = b.data<float>()[i];
    }
    if (std::isnan(x) && std::isnan(y)) continue;
    worst = std::max(worst, std::fabs(x - y) / std::max(1.0, std::fabs(x)));
  }
  return worst;
}

// One op case: inputs on the CPU, and a function that runs the op on whatever device its
// inputs are on and returns the outputs to compare.
struct OpCase {
  std::string name;
  std::vector<Tensor> inputs;  // CPU tensors; outputs are inputs too (they may be in/out)
  std::vector<int> outputs;    // indices into inputs to compare afterwards
  std::function<absl::Status(std::vector<Tensor>&)> run;
};

std::vector<OpCase> AllOpCases() {
  std::vector<OpCase> cases;
  const int64_t T = 6, H = 16;
  auto f = [](std::vector<int64_t> shape, uint32_t seed) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return Make(Randn(n, seed), std::move(shape));
  };
  auto zeros = [](std::vector<int64_t> shape, DType dtype = DType::kF32) {
    return *Tensor::Zeros(std::move(shape), dtype);
  };
  cases.push_back({"EmbeddingLookup", {f({20, H}, 1), MakeI32({3, 0, 19, 7, 7, 2}, {T}), zeros({T, H})}, {2},
                   [](auto& v) { return EmbeddingLookup(v[0], v[1], &v[2]); }});
  cases.push_back({"RmsNorm", {f({T, H}, 2), f({H}, 3), zeros({T, H})}, {2},
                   [](auto& v) { return RmsNorm(v[0], v[1], 1e-6f, 1.f, &v[2]); }});
  cases.push_back({"ApplyRotaryEmbedding", {MakeI32({0, 1, 2, 9, 4, 5}, {T}), f({10, 8}, 4), f({T, 2, H}, 5)}, {2},
                   [](auto& v) { return ApplyRotaryEmbedding(v[0], v[1], 8, &v[2]); }});
  cases.push_back({"SiluMul", {f({T, 2 * H}, 6), zeros({T, H})}, {1},
                   [](auto& v) { return SiluMul(v[0], &v[1]); }});
  cases.push_back({"CopyColumns", {f({T, 3 * H}, 7), zeros({T, H})}, {1},
                   [](auto& v) { return CopyColumns(v[0], 5, &v[1]); }});
  cases.push_back({"SigmoidGateInPlace", {f({T, 4}, 8), f({T, H}, 9)}, {1},
                   [](auto& v) { return SigmoidGateInPlace(v[0], &v[1]); }});
  cases.push_back({"ClampInPlace", {f({T, H}, 10)}, {0},
                   [](auto& v) { return ClampInPlace(0.5f, &v[0]); }});
  cases.push_back({"RouteTopK", {f({T, 8}, 11), zeros({T, 3}, DType::kI32), zeros({T, 3}),
                                 MakeI32({3, 1, 2, 3, 3, 1}, {T})}, {1, 2},
                   [](auto& v) { return RouteTopK(v[0], 3, true, &v[1], &v[2], v[3]); }});
  cases.push_back({"ScaledScatterAdd", {f({4, H}, 12), MakeI32({5, 0, 5, 2}, {4}), f({4}, 13), f({T, H}, 14)}, {3},
                   [](auto& v) { return ScaledScatterAdd(v[0], v[1], v[2], &v[3]); }});
  cases.push_back({"DeltaRuleGates", {f({T, 4}, 15), f({T, 4}, 16), f({4}, 17), f({4}, 18), zeros({T, 4}), zeros({T, 4})},
                   {4, 5}, [](auto& v) { return DeltaRuleGates(v[0], v[1], v[2], v[3], &v[4], &v[5]); }});
  cases.push_back({"SigmoidGroupMean", {f({T, H}, 19), zeros({T, 4})}, {1},
                   [](auto& v) { return SigmoidGroupMean(v[0], &v[1]); }});
  cases.push_back({"AddBiasInPlace", {f({H}, 20), f({T, H}, 21)}, {1},
                   [](auto& v) { return AddBiasInPlace(v[0], &v[1]); }});
  cases.push_back({"AddInPlace", {f({T, H}, 22), f({T, H}, 23)}, {1},
                   [](auto& v) { return AddInPlace(v[0], &v[1]); }});
  cases.push_back({"FillConstant", {f({T, H}, 24)}, {0},
                   [](auto& v) { return FillConstant(1.f, &v[0]); }});
  cases.push_back({"HeadSkipMask", {Make(Randn(T * 4, 25, 0.3f), {T, 4}), Make({0.1f, 0.f, -0.2f, 0.3f, 0.05f, 1.f}, {T}),
                                    zeros({T, 4}, DType::kI32)}, {2},
                   [](auto& v) { return HeadSkipMask(v[0], v[1], &v[2]); }});
  cases.push_back({"GatherRows", {f({T, H}, 26), MakeI32({5, 5, 0}, {3}), zeros({3, H})}, {2},
                   [](auto& v) { return GatherRows(v[0], v[1], &v[2]); }});
  cases.push_back({"WriteKvCache", {f({T, 2, 8}, 27), f({T, 2, 8}, 28), MakeI32({0, 9, 3, 4, 15, 1}, {T}),
                                    zeros({4, 4, 2, 8}), zeros({4, 4, 2, 8})}, {3, 4},
                   [](auto& v) { return WriteKvCache(v[0], v[1], v[2], &v[3], &v[4]); }});
  cases.push_back({"PagedAttention", {f({T, 4, 8}, 29), f({4, 4, 2, 8}, 30), f({4, 4, 2, 8}, 31),
                                      MakeI32({0, 4, 6}, {3}), MakeI32({4, 7}, {2}), MakeI32({2, -1, 3, 0}, {2, 2}),
                                      MakeI32({0, 1, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 1, 0}, {T, 4}),
                                      zeros({T, 4, 8})}, {7},
                   [](auto& v) {
                     return PagedAttention(v[0], v[1], v[2], AttentionBatch{v[3], v[4], v[5]}, 0.35f, &v[7], v[6]);
                   }});
  auto seqs = [] {
    return std::vector<Tensor>{MakeI32({0, 4, 5}, {3}), MakeI32({4, 1, 1}, {3}), MakeI32({2, 0, 1}, {3}),
                               MakeI32({1, 0, 1}, {3})};
  };
  {
    std::vector<Tensor> in = {f({T, H}, 32), f({H, 4}, 33), f({3, H, 3}, 34), zeros({T, H})};
    for (Tensor& t : seqs()) in.push_back(t);
    cases.push_back({"CausalConv1dSilu", in, {2, 3}, [](auto& v) {
                       return CausalConv1dSilu(v[0], v[1], LinearAttentionBatch{v[4], v[5], v[6], v[7]}, &v[2], &v[3]);
                     }});
  }
  {
    std::vector<float> gv = Randn(T * 4, 35), bv = Randn(T * 4, 36);
    for (float& e : gv) e = -std::fabs(e) * 0.1f;
    for (float& e : bv) e = 1.f / (1.f + std::exp(-e));
    std::vector<Tensor> in = {f({T, 2, 8}, 37), f({T, 2, 8}, 38), f({T, 4, 8}, 39), Make(gv, {T, 4}),
                              Make(bv, {T, 4}), Make(Randn(3 * 4 * 8 * 8, 40, 0.1f), {3, 4, 8, 8}),
                              zeros({T, 4, 8})};
    for (Tensor& t : seqs()) in.push_back(t);
    cases.push_back({"GatedDeltaRule", in, {5, 6}, [](auto& v) {
                       return GatedDeltaRule(v[0], v[1], v[2], v[3], v[4], LinearAttentionBatch{v[7], v[8], v[9], v[10]},
                                             &v[5], &v[6]);
                     }});
  }
  cases.push_back({"GatedRmsNorm", {f({T, 2, 8}, 41), f({T, 2, 8}, 42), f({8}, 43), zeros({T, 2, 8})}, {3},
                   [](auto& v) { return GatedRmsNorm(v[0], v[1], v[2], 1e-6f, &v[3]); }});
  return cases;
}

class BackendOpsTest : public ::testing::TestWithParam<Device> {};

TEST_P(BackendOpsTest, EveryOpMatchesTheCpuBody) {
  const Device device = GetParam();
  const std::string reason = testing::DeviceUnavailableReason(device);
  if (!reason.empty()) GTEST_SKIP() << reason;
  int compared = 0;
  std::vector<std::string> unsupported;
  for (OpCase& c : AllOpCases()) {
    std::vector<Tensor> reference;
    for (const Tensor& t : c.inputs) reference.push_back(CopyTo(t, Device::kCpu));
    ASSERT_TRUE(c.run(reference).ok()) << c.name << " on the CPU";
    std::vector<Tensor> on_device;
    for (const Tensor& t : c.inputs) on_device.push_back(CopyTo(t, device));
    absl::Status s = c.run(on_device);
    if (s.code() == absl::StatusCode::kUnimplemented) {
      unsupported.push_back(c.name);
      continue;
    }
    ASSERT_TRUE(s.ok()) << c.name << " on " << DeviceName(device) << ": " << s;
    ASSERT_TRUE(Synchronize(device).ok());
    for (int i : c.outputs) {
      Tensor got = CopyTo(on_device[i], Device::kCpu);
      const double tol = Tolerance(device, got.dtype());
      if (tol == 0.0) {
        EXPECT_TRUE(BitEqual(got, reference[i])) << c.name << " output " << i;
      } else {
        EXPECT_LE(MaxRelativeDiff(got, reference[i]), tol) << c.name << " output " << i;
      }
    }
    ++compared;
  }
  std::string list;
  for (const std::string& n : unsupported) list += " " + n;
  std::printf("[ %s ] %d ops compared with the CPU body; no body yet:%s\n",
              std::string(DeviceName(device)).c_str(), compared, list.empty() ? " none" : list.c_str());
  if (device == Device::kCpu) {
    EXPECT_TRUE(unsupported.empty());
  }
}

INSTANTIATE_TEST_SUITE_P(Devices, BackendOpsTest, ::testing::Values(Device::kCpu, Device::kCuda),
                         [](const ::testing::TestParamInfo<Device>& info) {
                           return std::string(DeviceName(info.param));
                         });

}  // namespace
}  // namespace sluice::kernels

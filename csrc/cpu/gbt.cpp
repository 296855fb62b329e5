// Gradient-boosted trees for DCI (SPEC §11): the regression trees and the log-loss negative gradient of
// scikit-learn's GradientBoostingClassifier() (sklearn 1.9: squared-error criterion, best splitter,
// max_features = all, min_samples_split 2, min_samples_leaf 1), operation for operation, so that
// trees, importances and predictions equal sklearn's. What differs is only how a node's samples are
// ordered by a feature: sklearn sorts them at every node; here every feature is sorted once and each
// split partitions the sorted orders stably. Without ties in a feature both orders are the one sorted
// order, so every sum is accumulated in sklearn's order and every comparison (ties between candidate
// splits included: sklearn's per-node feature permutation from its rand_r stream is replayed) comes
// out the same. dgmfast/metrics/gbt.py drives the boosting stages (leaf values, raw predictions).
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/full.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>
#include <utility>
#include <vector>

// sklearn's Cython is compiled without FMA contraction; sums and products must round alike.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace dgm::cpu {
namespace {

constexpr float kFeatureThreshold = 1e-7f;                            // sklearn's FEATURE_THRESHOLD
constexpr double kEpsilon = std::numeric_limits<double>::epsilon();  // sklearn's EPSILON
constexpr uint32_t kRandRMax = 0x7FFFFFFF;                            // sklearn's RAND_R_MAX

// sklearn.utils._random.our_rand_r (xorshift32).
inline uint32_t our_rand_r(uint32_t& state) {
  if (state == 0) state = 1;
  state ^= state << 13;
  state ^= state >> 17;
  state ^= state << 5;
  return state % (kRandRMax + 1u);
}

// Samples 0..N-1 sorted by each feature (stable), with their values: the layout every tree starts from.
struct SortedFeatures {
  const float* x;            // [N, F] row-major float32 (sklearn's DTYPE)
  const int32_t* order;      // [F, N]
  const float* values;       // [F, N]: x[order[f][p], f]
  int64_t N, F;
};

struct Tree {                // nodes in sklearn's order (depth first, left child first)
  int64_t* feature;          // -2 at leaves (sklearn's TREE_UNDEFINED)
  double* threshold;         // -2 at leaves
  int64_t* left;             // -1 at leaves (TREE_LEAF)
  int64_t* right;
  int64_t* leaf_of_sample;   // [N]: the leaf each training sample ends in (= tree.apply(X_train))
  double* importance;        // [F]: compute_feature_importances(normalize=False)
  int64_t node_count = 0;
};

struct Split {
  int64_t feature = 0, pos = 0;
  double threshold = 0.0, impurity_left = 0.0, impurity_right = 0.0, improvement = -INFINITY;
};

// One DecisionTreeRegressor(max_depth) fit on targets y (stride y_stride) with the splitter's rand_r
// seed `seed`: DepthFirstTreeBuilder + BestSplitter + MSE criterion with unit sample weights.
class TreeBuilder {
 public:
  TreeBuilder(const SortedFeatures& data, int64_t max_depth)
      : d_(data), max_depth_(max_depth), idx_(data.F * data.N), val_(data.F * data.N), samples_(data.N),
        go_left_(data.N), tmp_idx_(data.N), tmp_val_(data.N), features_(data.F), constant_features_(data.F),
        imp_(max_nodes(max_depth)), weight_(max_nodes(max_depth)) {}

  static int64_t max_nodes(int64_t max_depth) { return (int64_t{2} << max_depth) - 1; }

  void build(const double* y, int64_t y_stride, uint32_t seed, Tree& out) {
    const int64_t N = d_.N, F = d_.F;
    y_ = y;
    y_stride_ = y_stride;
    rand_state_ = seed;
    std::copy(d_.order, d_.order + F * N, idx_.begin());
    std::copy(d_.values, d_.values + F * N, val_.begin());
    for (int64_t i = 0; i < N; ++i) samples_[i] = static_cast<int32_t>(i);
    for (int64_t f = 0; f < F; ++f) features_[f] = f;
    std::fill(out.importance, out.importance + F, 0.0);
    out.node_count = 0;

    struct Record { int64_t start, end, depth, parent; bool is_left; double impurity; int64_t n_constant; };
    std::vector<Record> stack{{0, N, 0, -1, false, INFINITY, 0}};
    bool first = true;
    while (!stack.empty()) {
      const Record rec = stack.back();
      stack.pop_back();
      const int64_t n = rec.end - rec.start;
      node_reset(rec.start, rec.end);
      bool is_leaf = rec.depth >= max_depth_ || n < 2;
      double impurity = rec.impurity;
      if (first) {
        impurity = sq_sum_total_ / weighted_n_node_ - square(sum_total_ / weighted_n_node_);
        first = false;
      }
      is_leaf = is_leaf || impurity <= kEpsilon;
      Split split;
      int64_t n_constant = rec.n_constant;
      if (!is_leaf) {
        split = node_split(rec.start, rec.end, impurity, n_constant);
        is_leaf = split.pos >= rec.end || split.improvement + kEpsilon < 0.0;  // min_impurity_decrease 0
      }
      const int64_t id = out.node_count++;
      if (rec.parent >= 0) (rec.is_left ? out.left : out.right)[rec.parent] = id;
      out.feature[id] = is_leaf ? -2 : split.feature;
      out.threshold[id] = is_leaf ? -2.0 : split.threshold;
      out.left[id] = out.right[id] = -1;
      imp_[id] = impurity;
      weight_[id] = weighted_n_node_;
      if (is_leaf) {
        for (int64_t p = rec.start; p < rec.end; ++p) out.leaf_of_sample[samples_[p]] = id;
      } else {
        stack.push_back({split.pos, rec.end, rec.depth + 1, id, false, split.impurity_right, n_constant});
        stack.push_back({rec.start, split.pos, rec.depth + 1, id, true, split.impurity_left, n_constant});
      }
    }
    // Tree.compute_feature_importances(normalize=False): weighted impurity decrease per feature / N.
    for (int64_t i = 0; i < out.node_count; ++i) {
      if (out.left[i] < 0) continue;
      const int64_t l = out.left[i], r = out.right[i];
      out.importance[out.feature[i]] += weight_[i] * imp_[i] - weight_[l] * imp_[l] - weight_[r] * imp_[r];
    }
    for (int64_t f = 0; f < F; ++f) out.importance[f] /= weight_[0];
  }

 private:
  static double square(double v) { return v * v; }
  double y_at(int32_t i) const { return y_[i * y_stride_]; }

  // Criterion.init over samples[start:end] (sklearn's sample order).
  void node_reset(int64_t start, int64_t end) {
    sum_total_ = sq_sum_total_ = weighted_n_node_ = 0.0;
    for (int64_t p = start; p < end; ++p) {
      const double yi = y_at(samples_[p]);
      const double w_y = 1.0 * yi;
      sum_total_ += w_y;
      sq_sum_total_ += w_y * yi;
      weighted_n_node_ += 1.0;
    }
  }

  // Criterion.update(new_pos) from `pos` over sample ids ix[:end]: (sum_left, w_left) move forward
  // from pos, or back from end (reverse_reset) when that is shorter.
  void update(const int32_t* ix, int64_t end, int64_t pos, int64_t new_pos, double& sum_left, double& w_left) const {
    if (new_pos - pos <= end - new_pos) {
      for (int64_t p = pos; p < new_pos; ++p) {
        sum_left += 1.0 * y_at(ix[p]);
        w_left += 1.0;
      }
    } else {
      sum_left = sum_total_;
      w_left = weighted_n_node_;
      for (int64_t p = end - 1; p >= new_pos; --p) {
        sum_left -= 1.0 * y_at(ix[p]);
        w_left -= 1.0;
      }
    }
  }

  // BestSplitter.node_split (node_split_best) for samples[start:end].
  Split node_split(int64_t start, int64_t end, double impurity, int64_t& n_known_constants) {
    const int64_t F = d_.F, N = d_.N, n_known = n_known_constants;
    int64_t f_i = F, n_visited = 0, n_found = 0, n_drawn = 0, n_total = n_known;
    int64_t last_reordering = -1;  // last feature whose sort changed the order of samples[start:end]
    double best_proxy = -INFINITY;
    Split best;
    best.pos = end;
    while (f_i > n_total && (n_visited < F || n_visited <= n_found + n_drawn)) {
      ++n_visited;
      int64_t f_j = n_drawn + static_cast<int64_t>(our_rand_r(rand_state_)) % (f_i - n_found - n_drawn);
      if (f_j < n_known) {
        std::swap(features_[n_drawn], features_[f_j]);
        ++n_drawn;
        continue;
      }
      f_j += n_found;
      const int64_t f = features_[f_j];
      const float* v = val_.data() + f * N;
      const int32_t* ix = idx_.data() + f * N;
      if (v[start] != v[end - 1]) last_reordering = f;  // sorting identical values keeps their order
      if (v[end - 1] <= v[start] + kFeatureThreshold) {
        std::swap(features_[f_j], features_[n_total]);
        ++n_found;
        ++n_total;
        continue;
      }
      --f_i;
      std::swap(features_[f_i], features_[f_j]);
      double sum_left = 0.0, w_left = 0.0;
      int64_t pos = start, p = start;
      while (true) {  // candidate positions p: v[p] > v[p - 1] + FEATURE_THRESHOLD
        ++p;
        while (p < end && v[p] <= v[p - 1] + kFeatureThreshold) ++p;
        if (p >= end) break;
        update(ix, end, pos, p, sum_left, w_left);
        pos = p;
        const double w_right = weighted_n_node_ - w_left, sum_right = sum_total_ - sum_left;
        const double proxy = sum_left * sum_left / w_left + sum_right * sum_right / w_right;
        if (proxy > best_proxy) {
          best_proxy = proxy;
          best.feature = f;
          best.pos = p;
          best.threshold = static_cast<double>(v[p - 1]) / 2.0 + static_cast<double>(v[p]) / 2.0;
        }
      }
    }
    if (best.pos < end) finish_split(start, end, impurity, last_reordering, best);
    std::copy(constant_features_.begin(), constant_features_.begin() + n_known, features_.begin());
    std::copy(features_.begin() + n_known, features_.begin() + n_total, constant_features_.begin() + n_known);
    n_known_constants = n_total;
    return best;
  }

  // partition_samples_final, the children's impurities and the improvement of the chosen split; then
  // every feature's sorted segment is partitioned stably into the children's segments.
  void finish_split(int64_t start, int64_t end, double impurity, int64_t last_reordering, Split& best) {
    const int64_t F = d_.F, N = d_.N;
    if (last_reordering >= 0) {
      const int32_t* ix = idx_.data() + last_reordering * N;
      std::copy(ix + start, ix + end, samples_.begin() + start);
    }
    const float* x = d_.x;
    int64_t ps = start, pe = end;
    while (ps < pe) {
      if (static_cast<double>(x[samples_[ps] * F + best.feature]) <= best.threshold) {
        ++ps;
      } else {
        --pe;
        std::swap(samples_[ps], samples_[pe]);
      }
    }
    double sum_left = 0.0, w_left = 0.0, sq_sum_left = 0.0;
    update(samples_.data(), end, start, best.pos, sum_left, w_left);  // after reset()
    for (int64_t p = start; p < best.pos; ++p) {
      const double yi = y_at(samples_[p]);
      sq_sum_left += 1.0 * yi * yi;
    }
    const double w_right = weighted_n_node_ - w_left, sum_right = sum_total_ - sum_left;
    const double sq_sum_right = sq_sum_total_ - sq_sum_left;
    best.impurity_left = sq_sum_left / w_left - square(sum_left / w_left);
    best.impurity_right = sq_sum_right / w_right - square(sum_right / w_right);
    best.improvement = (weighted_n_node_ / static_cast<double>(N)) *
                       (impurity - (w_right / weighted_n_node_ * best.impurity_right) -
                        (w_left / weighted_n_node_ * best.impurity_left));
    for (int64_t p = start; p < end; ++p) go_left_[samples_[p]] = p < best.pos;
    for (int64_t f = 0; f < F; ++f) {
      int32_t* ix = idx_.data() + f * N;
      float* v = val_.data() + f * N;
      int64_t l = start, r = 0;
      for (int64_t p = start; p < end; ++p) {
        if (go_left_[ix[p]]) {
          ix[l] = ix[p];
          v[l++] = v[p];
        } else {
          tmp_idx_[r] = ix[p];
          tmp_val_[r++] = v[p];
        }
      }
      std::copy(tmp_idx_.begin(), tmp_idx_.begin() + r, ix + l);
      std::copy(tmp_val_.begin(), tmp_val_.begin() + r, v + l);
    }
  }

  const SortedFeatures& d_;
  const int64_t max_depth_;
  std::vector<int32_t> idx_;        // [F, N]: per feature, each node's samples sorted, in its segment
  std::vector<float> val_;          // [F, N]: their values
  std::vector<int32_t> samples_;    // sklearn's `samples` array (its order decides the sums' order)
  std::vector<uint8_t> go_left_;
  std::vector<int32_t> tmp_idx_;
  std::vector<float> tmp_val_;
  std::vector<int64_t> features_, constant_features_;
  std::vector<double> imp_, weight_;
  const double* y_ = nullptr;
  int64_t y_stride_ = 1;
  uint32_t rand_state_ = 0;
  double sum_total_ = 0.0, sq_sum_total_ = 0.0, weighted_n_node_ = 0.0;
};

void check_cpu(const at::Tensor& t, at::ScalarType dtype, int64_t dim, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == dtype && t.dim() == dim && t.is_contiguous(),
              "dgmfast: gbt: ", name, " must be a contiguous CPU ", dim, "-D ", c10::toString(dtype), " tensor");
}

// Fits T = targets.size(1) trees (one per column of targets [N, T], each with its rand_r seed) on x
// [N, F] float32 given order [F, N] int32 (stable argsort of each column) and the sorted values [F, N].
// Returns feature, threshold, children_left, children_right [T, 2^(max_depth+1)-1] (unused nodes -1),
// node_count [T], leaf_of_sample [T, N], importance [T, F].
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gbt_fit_trees_cpu(
    const at::Tensor& x, const at::Tensor& order, const at::Tensor& values, const at::Tensor& targets,
    const at::Tensor& seeds, int64_t max_depth) {
  check_cpu(x, at::kFloat, 2, "x");
  check_cpu(order, at::kInt, 2, "order");
  check_cpu(values, at::kFloat, 2, "values");
  check_cpu(targets, at::kDouble, 2, "targets");
  check_cpu(seeds, at::kLong, 1, "seeds");
  const int64_t N = x.size(0), F = x.size(1), T = targets.size(1);
  TORCH_CHECK(order.size(0) == F && order.size(1) == N && values.sizes() == order.sizes() &&
                  targets.size(0) == N && seeds.size(0) == T,
              "dgmfast: gbt_fit_trees: shapes do not match x [N, F]");
  TORCH_CHECK(N > 0 && N < (int64_t{1} << 31) && F > 0, "dgmfast: gbt_fit_trees: need 0 < N < 2^31 and F > 0");
  TORCH_CHECK(max_depth >= 1 && max_depth <= 20, "dgmfast: gbt_fit_trees: max_depth must be in 1..20");
  const int64_t M = TreeBuilder::max_nodes(max_depth);
  auto opts = x.options().dtype(at::kLong);
  at::Tensor feature = at::full({T, M}, -1, opts), left = at::full({T, M}, -1, opts), right = at::full({T, M}, -1, opts);
  at::Tensor threshold = at::full({T, M}, -1.0, x.options().dtype(at::kDouble));
  at::Tensor node_count = at::empty({T}, opts), leaf = at::empty({T, N}, opts);
  at::Tensor importance = at::empty({T, F}, x.options().dtype(at::kDouble));
  const SortedFeatures data{x.data_ptr<float>(), order.data_ptr<int32_t>(), values.data_ptr<float>(), N, F};
  const double* y = targets.data_ptr<double>();
  const int64_t* seed = seeds.data_ptr<int64_t>();
  at::parallel_for(0, T, 1, [&](int64_t t0, int64_t t1) {
    TreeBuilder builder(data, max_depth);
    for (int64_t t = t0; t < t1; ++t) {
      Tree tree{feature.data_ptr<int64_t>() + t * M, threshold.data_ptr<double>() + t * M,
                left.data_ptr<int64_t>() + t * M,   right.data_ptr<int64_t>() + t * M,
                leaf.data_ptr<int64_t>() + t * N,   importance.data_ptr<double>() + t * F};
      builder.build(y + t, T, static_cast<uint32_t>(seed[t]), tree);
      node_count.data_ptr<int64_t>()[t] = tree.node_count;
    }
  });
  return {feature, threshold, left, right, node_count, leaf, importance};
}

// Negative gradient of sklearn's log loss at raw predictions raw [N, T] for labels y [N] in 0..K-1:
// T = K > 2: y_k - softmax(raw)_k (HalfMultinomialLoss); T = 1 (K = 2): y - expit(raw) (HalfBinomialLoss),
// with sklearn's formulas and order of operations.
at::Tensor gbt_negative_gradient_cpu(const at::Tensor& raw, const at::Tensor& y) {
  check_cpu(raw, at::kDouble, 2, "raw");
  check_cpu(y, at::kLong, 1, "y");
  const int64_t N = raw.size(0), T = raw.size(1);
  TORCH_CHECK(y.size(0) == N && T != 2, "dgmfast: gbt_negative_gradient: raw [N, T] (T = 1 or K > 2), y [N]");
  at::Tensor out = at::empty_like(raw);
  const double* r = raw.data_ptr<double>();
  const int64_t* label = y.data_ptr<int64_t>();
  double* g = out.data_ptr<double>();
  at::parallel_for(0, N, 1024, [&](int64_t i0, int64_t i1) {
    std::vector<double> p(T);
    for (int64_t i = i0; i < i1; ++i) {
      const double* ri = r + i * T;
      double* gi = g + i * T;
      if (T == 1) {
        const double yt = static_cast<double>(label[i]);
        double grad;
        if (ri[0] > -37) {
          const double e = std::exp(-ri[0]);
          grad = ((1 - yt) - yt * e) / (1 + e);
        } else {
          grad = std::exp(ri[0]) - yt;
        }
        gi[0] = -grad;
        continue;
      }
      double max_value = ri[0], sum_exps = 0.0;
      for (int64_t k = 1; k < T; ++k)
        if (max_value < ri[k]) max_value = ri[k];
      for (int64_t k = 0; k < T; ++k) {
        p[k] = std::exp(ri[k] - max_value);
        sum_exps += p[k];
      }
      for (int64_t k = 0; k < T; ++k) {
        p[k] /= sum_exps;
        gi[k] = -(p[k] - static_cast<double>(label[i] == k));
      }
    }
  });
  return out;
}

}  // namespace
}  // namespace dgm::cpu

TORCH_LIBRARY_FRAGMENT(dgmfast_C, m) {
  m.def("gbt_fit_trees(Tensor x, Tensor order, Tensor values, Tensor targets, Tensor seeds, int max_depth) -> "
        "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("gbt_negative_gradient(Tensor raw, Tensor y) -> Tensor");
}

TORCH_LIBRARY_IMPL(dgmfast_C, CPU, m) {
  m.impl("gbt_fit_trees", &dgm::cpu::gbt_fit_trees_cpu);
  m.impl("gbt_negative_gradient", &dgm::cpu::gbt_negative_gradient_cpu);
}

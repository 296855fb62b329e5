// Gradient-boosted trees for DCI (SPEC §11): the regression trees and the log-loss negative gradient of
// scikit-learn's GradientBoostingClassifier() (sklearn 1.9: squared-error criterion, best splitter,
// max_features = all, min_samples_split 2, min_samples_leaf 1), operation for operation, so that
// trees, importances and predictions equal sklearn's. What differs is only how a node's samples are
// ordered by a feature: sklearn sorts them at every node; here every feature is sorted once and each
// split partitions the sorted orders stably. Without ties in a feature both orders are the one sorted
// order, so every sum is accumulated in sklearn's order and every comparison (ties between candidate
// splits included: sklearn's per-node feature permutation from its rand_r stream is replayed) comes
// out the same. dgmfast/metrics/gbt.py runs the stages (init, seeds) and holds the fitted trees.
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
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
constexpr int64_t kGroup = 4;  // features whose running sums are accumulated together

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

// One DecisionTreeRegressor(max_depth) fit on targets y [N] with the splitter's rand_r
// seed `seed`: DepthFirstTreeBuilder + BestSplitter + MSE criterion with unit sample weights.
class TreeBuilder {
 public:
  TreeBuilder(const SortedFeatures& data, int64_t max_depth)
      : d_(data), max_depth_(max_depth), idx_(data.F * data.N), val_(data.F * data.N), samples_(data.N),
        go_left_(data.N), tmp_idx_(data.N), tmp_val_(data.N), features_(data.F), constant_features_(data.F),
        imp_(max_nodes(max_depth)), weight_(max_nodes(max_depth)), sum_left_(kGroup * data.N), proxy_(data.N),
        candidate_(data.N) {}

  static int64_t max_nodes(int64_t max_depth) { return (int64_t{2} << max_depth) - 1; }

  void build(const double* y, uint32_t seed, Tree& out) {
    const int64_t N = d_.N, F = d_.F;
    y_ = y;
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
        split = node_split(rec.start, rec.end, impurity, n_constant, rec.depth + 1 >= max_depth_);
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
  double y_at(int32_t i) const { return y_[i]; }

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
  Split node_split(int64_t start, int64_t end, double impurity, int64_t& n_known_constants, bool leaf_children) {
    const int64_t F = d_.F, N = d_.N, n_known = n_known_constants;
    int64_t f_i = F, n_visited = 0, n_found = 0, n_drawn = 0, n_total = n_known;
    int64_t last_reordering = -1;  // last feature whose sort changed the order of samples[start:end]
    double best_proxy = -INFINITY;
    Split best;
    best.pos = end;
    to_scan_.clear();
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
      if (v[start] != v[end - 1]) last_reordering = f;  // sorting identical values keeps their order
      if (v[end - 1] <= v[start] + kFeatureThreshold) {
        std::swap(features_[f_j], features_[n_total]);
        ++n_found;
        ++n_total;
        continue;
      }
      --f_i;
      std::swap(features_[f_i], features_[f_j]);
      to_scan_.push_back(f);
    }
    // The scans, in the order drawn; running sums kGroup features at a time (independent chains).
    for (size_t s = 0; s < to_scan_.size(); s += kGroup) {
      const int64_t group = std::min<int64_t>(kGroup, to_scan_.size() - s);
      switch (group) {
        case 1: running_sums<1>(start, end, &to_scan_[s]); break;
        case 2: running_sums<2>(start, end, &to_scan_[s]); break;
        case 3: running_sums<3>(start, end, &to_scan_[s]); break;
        default: running_sums<4>(start, end, &to_scan_[s]); break;
      }
      for (int64_t g = 0; g < group; ++g)
        scan_feature(start, end, to_scan_[s + g], sum_left_.data() + g * N, best_proxy, best);
    }
    if (best.pos < end) finish_split(start, end, impurity, last_reordering, leaf_children, best);
    std::copy(constant_features_.begin(), constant_features_.begin() + n_known, features_.begin());
    std::copy(features_.begin() + n_known, features_.begin() + n_total, constant_features_.begin() + n_known);
    n_known_constants = n_total;
    return best;
  }

  // sum_left_[g * N + j] = running sum of the first j targets of features[g] in sorted order (what
  // forward updates accumulate), for G features at once.
  template <int G>
  void running_sums(int64_t start, int64_t end, const int64_t* features) {
    const int64_t N = d_.N, n = end - start;
    const double* __restrict y = y_;
    const int32_t* ix[G];
    double* sl[G];
    double running[G];
    for (int g = 0; g < G; ++g) {
      ix[g] = idx_.data() + features[g] * N + start;
      sl[g] = sum_left_.data() + g * N;
      sl[g][0] = running[g] = 0.0;
    }
    for (int64_t j = 1; j < n; ++j) {
      for (int g = 0; g < G; ++g) {
        running[g] += 1.0 * y[ix[g][j - 1]];
        sl[g][j] = running[g];
      }
    }
  }

  // The split search over one feature (the loop body of node_split_best): candidate positions p have
  // v[p] > v[p - 1] + FEATURE_THRESHOLD; the left sums move with Criterion.update; a candidate replaces
  // the best when its proxy sum_l^2 / n_l + sum_r^2 / n_r is strictly larger. When every update moves
  // forward (always, unless skipped positions lie near the end), sum_left at p is the running sum
  // `sl[p]` of the first p targets and the proxies of all positions are computed at once
  // (vectorized, the same IEEE operations); otherwise Criterion.update is replayed step by step.
  void scan_feature(int64_t start, int64_t end, int64_t f, const double* __restrict sl, double& best_proxy,
                    Split& best) {
    const int64_t N = d_.N, n = end - start;
    const float* __restrict v = val_.data() + f * N + start;
    double* __restrict proxy = proxy_.data();
    uint8_t* __restrict candidate = candidate_.data();
    int64_t skipped = 0;
    for (int64_t j = 1; j < n; ++j) {
      candidate[j] = v[j] > v[j - 1] + kFeatureThreshold;
      skipped += 1 - candidate[j];
    }
    // An update goes back from the end iff p - (previous candidate) > end - p, only possible past
    // the middle (branch-free: skipped positions are frequent on codes of a narrow range).
    if (skipped > 0) {
      const int64_t middle = n / 2;
      int64_t previous = middle;
      while (previous > 0 && !candidate[previous]) --previous;
      bool backward = false;
      for (int64_t j = middle + 1; j < n; ++j) {
        const bool is_candidate = candidate[j];
        backward |= is_candidate & (j - previous > n - j);
        previous = is_candidate ? j : previous;
      }
      if (backward) return scan_feature_replay(start, end, f, best_proxy, best);
    }
    const double total = sum_total_, w_node = weighted_n_node_;
    for (int64_t j = 1; j < n; ++j) {
      const double w_left = static_cast<double>(j), w_right = w_node - w_left, sum_right = total - sl[j];
      proxy[j] = sl[j] * sl[j] / w_left + sum_right * sum_right / w_right;
    }
    if (skipped > 0)
      for (int64_t j = 1; j < n; ++j) proxy[j] = candidate[j] ? proxy[j] : -INFINITY;
    // The sequential scan keeps the first position of the largest proxy, if it beats best_proxy.
    // (Proxies are never NaN, so a vector maximum finds the same largest value.)
    using Vec = at::vec::Vectorized<double>;
    Vec vmax(-INFINITY);
    int64_t j = 1;
    for (; j + Vec::size() <= n; j += Vec::size()) vmax = at::vec::maximum(vmax, Vec::loadu(proxy + j));
    double max_proxy = at::vec::vec_reduce_all<double>([](Vec a, Vec b) { return at::vec::maximum(a, b); }, vmax);
    for (; j < n; ++j) max_proxy = proxy[j] > max_proxy ? proxy[j] : max_proxy;
    if (!(max_proxy > best_proxy)) return;
    int64_t arg = 1;
    while (proxy[arg] != max_proxy) ++arg;
    set_best(f, start + arg, v[arg - 1], v[arg], max_proxy, best_proxy, best);
  }

  void scan_feature_replay(int64_t start, int64_t end, int64_t f, double& best_proxy, Split& best) {
    const float* v = val_.data() + f * d_.N;
    const int32_t* ix = idx_.data() + f * d_.N;
    double sum_left = 0.0, w_left = 0.0;
    int64_t pos = start, p = start;
    while (true) {
      ++p;
      while (p < end && v[p] <= v[p - 1] + kFeatureThreshold) ++p;
      if (p >= end) break;
      update(ix, end, pos, p, sum_left, w_left);
      pos = p;
      const double w_right = weighted_n_node_ - w_left, sum_right = sum_total_ - sum_left;
      const double proxy = sum_left * sum_left / w_left + sum_right * sum_right / w_right;
      if (proxy > best_proxy) set_best(f, p, v[p - 1], v[p], proxy, best_proxy, best);
    }
  }

  static void set_best(int64_t f, int64_t pos, float below, float above, double proxy, double& best_proxy,
                       Split& best) {
    best_proxy = proxy;
    best.feature = f;
    best.pos = pos;
    best.threshold = static_cast<double>(below) / 2.0 + static_cast<double>(above) / 2.0;  // sum of halves
  }

  // partition_samples_final, the children's impurities and the improvement of the chosen split; then
  // (unless the children are at max_depth) every feature's sorted segment is partitioned stably into
  // the children's segments.
  void finish_split(int64_t start, int64_t end, double impurity, int64_t last_reordering, bool leaf_children,
                    Split& best) {
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
    if (leaf_children) return;  // at max_depth: never scanned, so no sorted segments needed
    for (int64_t p = start; p < end; ++p) go_left_[samples_[p]] = p < best.pos;
    for (int64_t f = 0; f < F; ++f) {
      int32_t* ix = idx_.data() + f * N;
      float* v = val_.data() + f * N;
      int64_t l = start, r = 0;
      for (int64_t p = start; p < end; ++p) {  // branch-free: l <= p, so ix[l] is already read
        const int32_t id = ix[p];
        const float value = v[p];
        const bool to_left = go_left_[id];
        ix[l] = id;
        v[l] = value;
        tmp_idx_[r] = id;
        tmp_val_[r] = value;
        l += to_left;
        r += !to_left;
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
  std::vector<double> imp_, weight_;    // per node: impurity, weighted samples
  std::vector<double> sum_left_, proxy_;  // running sums [kGroup, N] and proxies [N] per position
  std::vector<int64_t> to_scan_;          // non-constant features of a node in the order drawn
  std::vector<uint8_t> candidate_;
  const double* y_ = nullptr;      // targets [N] of the tree being built
  uint32_t rand_state_ = 0;
  double sum_total_ = 0.0, sq_sum_total_ = 0.0, weighted_n_node_ = 0.0;
};

// numpy's float64 sum of a contiguous array (np.add.reduce: 0.0 + pairwise sum, blocks of 128 with
// 8 accumulators), so that leaf values round as sklearn's np.average.
double numpy_pairwise_sum(const double* a, int64_t n) {
  if (n < 8) {
    double res = 0.0;
    for (int64_t i = 0; i < n; ++i) res += a[i];
    return res;
  }
  if (n <= 128) {
    double r[8];
    for (int j = 0; j < 8; ++j) r[j] = a[j];
    int64_t i = 8;
    for (; i < n - (n % 8); i += 8)
      for (int j = 0; j < 8; ++j) r[j] += a[i + j];
    double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; ++i) res += a[i];
    return res;
  }
  int64_t n2 = n / 2;
  n2 -= n2 % 8;
  return numpy_pairwise_sum(a, n2) + numpy_pairwise_sum(a + n2, n - n2);
}
double numpy_sum(const double* a, int64_t n) { return 0.0 + numpy_pairwise_sum(a, n); }

// Negative gradient of sklearn's log loss for row i of raw [N, T]: T = K > 2: y_k - softmax(raw)_k
// (HalfMultinomialLoss); T = 1 (K = 2): y - expit(raw) (HalfBinomialLoss); sklearn's formulas.
void negative_gradient_row(const double* ri, int64_t label, int64_t T, double* p, double* gi) {
  if (T == 1) {
    const double yt = static_cast<double>(label);
    double grad;
    if (ri[0] > -37) {
      const double e = std::exp(-ri[0]);
      grad = ((1 - yt) - yt * e) / (1 + e);
    } else {
      grad = std::exp(ri[0]) - yt;
    }
    gi[0] = -grad;
    return;
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
    gi[k] = -(p[k] - static_cast<double>(label == k));
  }
}

// sklearn's _update_terminal_regions: per leaf one Newton step mean(g) / mean(p (1 - p)) with
// g = y - p the negative gradient (times (K - 1) / K for K > 2), 0 if |denominator| < 1e-150; each
// leaf's samples in increasing index order, means as np.average.
void leaf_values(const Tree& tree, int64_t N, const double* y, const double* g, int64_t num_classes,
                 double* value, std::vector<int64_t>& bounds, std::vector<double>& ga, std::vector<double>& ha) {
  const int64_t n_nodes = tree.node_count;
  bounds.assign(n_nodes + 1, 0);
  for (int64_t i = 0; i < N; ++i) ++bounds[tree.leaf_of_sample[i] + 1];
  for (int64_t j = 0; j < n_nodes; ++j) bounds[j + 1] += bounds[j];
  std::vector<int64_t> next(bounds.begin(), bounds.end() - 1);
  for (int64_t i = 0; i < N; ++i) {
    const int64_t at = next[tree.leaf_of_sample[i]]++;
    ga[at] = g[i];
    const double prob = y[i] - g[i];
    ha[at] = prob * (1 - prob);
  }
  for (int64_t j = 0; j < n_nodes; ++j) {
    value[j] = 0.0;
    const int64_t n = bounds[j + 1] - bounds[j];
    if (tree.left[j] >= 0 || n == 0) continue;
    double numerator = numpy_sum(ga.data() + bounds[j], n) / static_cast<double>(n);
    if (num_classes > 2) numerator *= static_cast<double>(num_classes - 1) / static_cast<double>(num_classes);
    const double denominator = numpy_sum(ha.data() + bounds[j], n) / static_cast<double>(n);
    value[j] = std::abs(denominator) < 1e-150 ? 0.0 : numerator / denominator;
  }
}

void check_cpu(const at::Tensor& t, at::ScalarType dtype, int64_t dim, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == dtype && t.dim() == dim && t.is_contiguous(),
              "dgmfast: gbt: ", name, " must be a contiguous CPU ", dim, "-D ", c10::toString(dtype), " tensor");
}

// One boosting stage of GradientBoostingClassifier (sklearn's _fit_stage): the negative gradient at raw
// [N, T] (T = 1 for two classes, else T = K), one regression tree per column with its splitter seed
// seeds[t], Newton leaf values, and raw[:, t] += learning_rate * value[leaf] in place. x [N, F] float32,
// order [F, N] int32 (stable argsort of each column), values [F, N] the sorted x, labels [N] in 0..K-1.
// Returns feature, threshold, children_left, children_right, value [T, 2^(max_depth+1)-1] (slots past
// node_count: -1), node_count [T], importance [T, F] (each tree's unnormalized impurity decreases).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gbt_fit_stage_cpu(
    const at::Tensor& x, const at::Tensor& order, const at::Tensor& values, const at::Tensor& labels,
    const at::Tensor& raw, const at::Tensor& seeds, int64_t num_classes, int64_t max_depth, double learning_rate) {
  check_cpu(x, at::kFloat, 2, "x");
  check_cpu(order, at::kInt, 2, "order");
  check_cpu(values, at::kFloat, 2, "values");
  check_cpu(labels, at::kLong, 1, "labels");
  check_cpu(raw, at::kDouble, 2, "raw");
  check_cpu(seeds, at::kLong, 1, "seeds");
  const int64_t N = x.size(0), F = x.size(1), T = raw.size(1);
  TORCH_CHECK(order.size(0) == F && order.size(1) == N && values.sizes() == order.sizes() && labels.size(0) == N &&
                  raw.size(0) == N && seeds.size(0) == T,
              "dgmfast: gbt_fit_stage: shapes do not match x [N, F]");
  TORCH_CHECK(num_classes >= 2 && T == (num_classes == 2 ? 1 : num_classes),
              "dgmfast: gbt_fit_stage: raw must have 1 column for 2 classes, else one per class");
  TORCH_CHECK(N > 0 && N < (int64_t{1} << 31) && F > 0, "dgmfast: gbt_fit_stage: need 0 < N < 2^31 and F > 0");
  TORCH_CHECK(max_depth >= 1 && max_depth <= 20, "dgmfast: gbt_fit_stage: max_depth must be in 1..20");
  const int64_t M = TreeBuilder::max_nodes(max_depth);
  auto opts = x.options().dtype(at::kLong);
  at::Tensor feature = at::full({T, M}, -1, opts), left = at::full({T, M}, -1, opts), right = at::full({T, M}, -1, opts);
  at::Tensor threshold = at::full({T, M}, -1.0, x.options().dtype(at::kDouble));
  at::Tensor value = at::full({T, M}, -1.0, x.options().dtype(at::kDouble));
  at::Tensor node_count = at::empty({T}, opts), leaf = at::empty({T, N}, opts);
  at::Tensor importance = at::empty({T, F}, x.options().dtype(at::kDouble));
  at::Tensor neg_grad = at::empty({T, N}, raw.options());     // transposed: one contiguous row per tree
  double* r = raw.data_ptr<double>();
  double* g = neg_grad.data_ptr<double>();
  const int64_t* label = labels.data_ptr<int64_t>();
  // The gradient and the raw update are serial: a few % of a stage, and every parallel region costs a
  // barrier (per stage, on a loaded machine, more than it gains); the trees are the parallel part.
  std::vector<double> p(T), gi(T);
  for (int64_t i = 0; i < N; ++i) {
    negative_gradient_row(r + i * T, label[i], T, p.data(), gi.data());
    for (int64_t t = 0; t < T; ++t) g[t * N + i] = gi[t];
  }
  const SortedFeatures data{x.data_ptr<float>(), order.data_ptr<int32_t>(), values.data_ptr<float>(), N, F};
  const int64_t* seed = seeds.data_ptr<int64_t>();
  at::parallel_for(0, T, 1, [&](int64_t t0, int64_t t1) {
    TreeBuilder builder(data, max_depth);
    std::vector<double> y(N), ga(N), ha(N);
    std::vector<int64_t> bounds;
    for (int64_t t = t0; t < t1; ++t) {
      Tree tree{feature.data_ptr<int64_t>() + t * M, threshold.data_ptr<double>() + t * M,
                left.data_ptr<int64_t>() + t * M,   right.data_ptr<int64_t>() + t * M,
                leaf.data_ptr<int64_t>() + t * N,   importance.data_ptr<double>() + t * F};
      builder.build(g + t * N, static_cast<uint32_t>(seed[t]), tree);
      node_count.data_ptr<int64_t>()[t] = tree.node_count;
      for (int64_t i = 0; i < N; ++i) y[i] = T == 1 ? static_cast<double>(label[i]) : static_cast<double>(label[i] == t);
      leaf_values(tree, N, y.data(), g + t * N, num_classes, value.data_ptr<double>() + t * M, bounds, ga, ha);
    }
  });
  const double* v = value.data_ptr<double>();
  const int64_t* lf = leaf.data_ptr<int64_t>();
  for (int64_t i = 0; i < N; ++i)
    for (int64_t t = 0; t < T; ++t) r[i * T + t] += learning_rate * v[t * M + lf[t * N + i]];
  return {feature, threshold, left, right, value, node_count, importance};
}

// Raw predictions [N, T] of the fitted stages for x [N, F] float32 (sklearn's predict_stages): init [T]
// plus, stage after stage, learning_rate * value of the leaf x reaches in each tree (x <= threshold:
// left). Trees as gbt_fit_stage returns them, stacked over stages: [S, T, M].
at::Tensor gbt_decision_function_cpu(const at::Tensor& x, const at::Tensor& feature, const at::Tensor& threshold,
                                     const at::Tensor& left, const at::Tensor& right, const at::Tensor& value,
                                     const at::Tensor& init, double learning_rate) {
  check_cpu(x, at::kFloat, 2, "x");
  check_cpu(feature, at::kLong, 3, "feature");
  check_cpu(threshold, at::kDouble, 3, "threshold");
  check_cpu(left, at::kLong, 3, "children_left");
  check_cpu(right, at::kLong, 3, "children_right");
  check_cpu(value, at::kDouble, 3, "value");
  check_cpu(init, at::kDouble, 1, "init");
  const int64_t N = x.size(0), F = x.size(1), S = feature.size(0), T = feature.size(1), M = feature.size(2);
  for (const at::Tensor* t : {&threshold, &left, &right, &value})
    TORCH_CHECK(t->sizes() == feature.sizes(), "dgmfast: gbt_decision_function: tree arrays must have one shape");
  TORCH_CHECK(init.size(0) == T, "dgmfast: gbt_decision_function: init must have one value per tree of a stage");
  TORCH_CHECK(feature.lt(F).all().item<bool>() && left.lt(M).all().item<bool>() && right.lt(M).all().item<bool>(),
              "dgmfast: gbt_decision_function: node or feature index out of range");
  at::Tensor raw = at::empty({N, T}, init.options());
  const float* xp = x.data_ptr<float>();
  const int64_t *fp = feature.data_ptr<int64_t>(), *lp = left.data_ptr<int64_t>(), *rp = right.data_ptr<int64_t>();
  const double *tp = threshold.data_ptr<double>(), *vp = value.data_ptr<double>(), *ip = init.data_ptr<double>();
  double* out = raw.data_ptr<double>();
  // Blocks of samples against one tree at a time: the tree stays in L1 while its block passes.
  constexpr int64_t kBlock = 256;
  at::parallel_for(0, (N + kBlock - 1) / kBlock, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t i0 = b0 * kBlock; i0 < std::min(N, b1 * kBlock); i0 += kBlock) {
      const int64_t i1 = std::min(N, i0 + kBlock);
      for (int64_t i = i0; i < i1; ++i)
        for (int64_t t = 0; t < T; ++t) out[i * T + t] = ip[t];
      for (int64_t st = 0; st < S * T; ++st) {  // stage after stage, as sklearn adds them
        const int64_t base = st * M, t = st % T;
        for (int64_t i = i0; i < i1; ++i) {
          const float* xi = xp + i * F;
          int64_t node = 0;
          while (lp[base + node] >= 0)
            node = static_cast<double>(xi[fp[base + node]]) <= tp[base + node] ? lp[base + node] : rp[base + node];
          out[i * T + t] += learning_rate * vp[base + node];
        }
      }
    }
  });
  return raw;
}

}  // namespace
}  // namespace dgm::cpu

TORCH_LIBRARY_FRAGMENT(dgmfast_C, m) {
  m.def("gbt_fit_stage(Tensor x, Tensor order, Tensor values, Tensor labels, Tensor(a!) raw, Tensor seeds, "
        "int num_classes, int max_depth, float learning_rate) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("gbt_decision_function(Tensor x, Tensor feature, Tensor threshold, Tensor children_left, "
        "Tensor children_right, Tensor value, Tensor init, float learning_rate) -> Tensor");
}

TORCH_LIBRARY_IMPL(dgmfast_C, CPU, m) {
  m.impl("gbt_fit_stage", &dgm::cpu::gbt_fit_stage_cpu);
  m.impl("gbt_decision_function", &dgm::cpu::gbt_decision_function_cpu);
}

// tests/fuzz/balancer_fuzz.cpp - levee::balancer over every strategy with
// random membership, weights, tiers, health marks, max_in_flight caps,
// exclusions, batches, leases (finish, record + try_pick_keeping, plain
// release) and picks. Health decorations are off (health_options::disabled())
// so eligibility is exact. Checked:
//  - a pick returns an eligible backend (present, marked healthy, not
//    excluded, below its cap) of the lowest tier that has one, and nullopt
//    only when no backend is eligible;
//  - hashing strategies map a key to the same backend while nothing changes;
//  - in-flight counts (stats()) equal the harness's open leases, and return
//    to zero when every lease is gone;
//  - shares: round_robin and weighted_round_robin give exact shares over
//    whole periods; random and weighted_random stay within 6 standard
//    deviations of their expected shares; round robin with one backend
//    excluded still gives every other backend an equal share.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <levee/balance.hpp>
#include <levee/clock.hpp>
#include <map>
#include <numeric>
#include <optional>
#include <stdexcept>
#include <vector>

#include "fuzz_input.hpp"

namespace {

struct member {
  std::uint32_t weight = 1;
  std::uint32_t tier = 0;
  std::size_t max_in_flight = 0;
  bool healthy = true;
  std::int64_t leases = 0;        // open (unfinished and not destroyed) leases
  std::uint64_t incarnation = 0;  // a removed and re-added id is a new backend
};

enum class share_kind { none, exact_equal, exact_weighted, random_equal, random_weighted };

// The largest weight drawn. A ring_hash ring has points in proportion to the
// total weight and is rebuilt on every change: with weights up to 1,000 an
// input of 500 changes takes minutes, which finds the harness's limits, not
// the library's. The ring strategies draw weights below 16.
template <class S>
constexpr std::uint32_t weight_limit = 1000;
template <>
constexpr std::uint32_t weight_limit<levee::ring_hash> = 16;
template <>
constexpr std::uint32_t weight_limit<levee::bounded_load<levee::ring_hash>> = 16;

template <class S>
void run(levee_fuzz::input& in, S strategy, share_kind shares, bool keyed) {
  constexpr std::uint32_t wmax = weight_limit<S>;
  using balancer_type = levee::balancer<S, levee::manual_clock>;
  using lease = typename balancer_type::lease;
  levee::manual_clock clk;
  balancer_type bal(std::move(strategy), levee::health_options::disabled(), clk);
  std::map<levee::backend_id, member> model;
  struct open_lease {
    lease l;
    levee::backend_id id;
    std::uint64_t incarnation;
    bool finished;
  };
  std::vector<open_lease> leases;
  std::optional<lease> kept;  // recorded, slot still held (try_pick_keeping)
  levee::backend_id kept_id = 0;
  std::uint64_t kept_incarnation = 0;
  std::uint64_t incarnations = 0;
  levee::rng gen(in.u64());

  auto eligible = [&](levee::backend_id id, const std::vector<levee::backend_id>& ex) {
    const auto it = model.find(id);
    if (it == model.end() || !it->second.healthy) return false;
    if (std::find(ex.begin(), ex.end(), id) != ex.end()) return false;
    return it->second.max_in_flight == 0 ||
           it->second.leases < static_cast<std::int64_t>(it->second.max_in_flight);
  };
  auto check_pick = [&](const std::optional<lease>& got, const std::vector<levee::backend_id>& ex) {
    std::optional<std::uint32_t> best_tier;
    for (const auto& [id, m] : model)
      if (eligible(id, ex) && (!best_tier || m.tier < *best_tier)) best_tier = m.tier;
    if (!got) {
      LEVEE_FUZZ_CHECK(!best_tier, "no pick although an eligible backend exists (tier %u)",
                       best_tier.value_or(0));
      return;
    }
    const levee::backend_id id = got->id();
    LEVEE_FUZZ_CHECK(eligible(id, ex), "picked ineligible backend %llu", static_cast<unsigned long long>(id));
    LEVEE_FUZZ_CHECK(model[id].tier == *best_tier, "picked backend %llu of tier %u while tier %u had one",
                     static_cast<unsigned long long>(id), model[id].tier, *best_tier);
  };
  auto check_in_flight = [&] {
    const auto st = bal.stats();
    LEVEE_FUZZ_CHECK(st.size() == model.size(), "stats() lists %zu backends, model %zu", st.size(),
                     model.size());
    LEVEE_FUZZ_CHECK(bal.size() == model.size(), "size() %zu, model %zu", bal.size(), model.size());
    for (const auto& s : st) {
      const auto it = model.find(s.id);
      LEVEE_FUZZ_CHECK(it != model.end(), "stats() lists unknown backend %llu",
                       static_cast<unsigned long long>(s.id));
      LEVEE_FUZZ_CHECK(s.in_flight == it->second.leases, "backend %llu in flight %lld, open leases %lld",
                       static_cast<unsigned long long>(s.id), static_cast<long long>(s.in_flight),
                       static_cast<long long>(it->second.leases));
      LEVEE_FUZZ_CHECK(s.weight == it->second.weight && s.healthy == it->second.healthy &&
                           s.max_in_flight == it->second.max_in_flight,
                       "stats() of backend %llu disagree with the changes made",
                       static_cast<unsigned long long>(s.id));
    }
  };
  auto lease_gone = [&](levee::backend_id id, std::uint64_t incarnation) {
    auto it = model.find(id);
    if (it != model.end() && it->second.incarnation == incarnation) --it->second.leases;
  };
  auto drop_lease = [&](std::size_t i) {
    open_lease& ol = leases[i];
    if (!ol.finished) lease_gone(ol.id, ol.incarnation);
    leases.erase(leases.begin() + static_cast<std::ptrdiff_t>(i));
  };
  auto new_id = [&] { return static_cast<levee::backend_id>(1 + in.below(24)); };

  for (int ops = 0; ops < 500 && !in.empty(); ++ops) {
    switch (in.below(14)) {
      case 0:
      case 1: {  // add
        const levee::backend_id id = new_id();
        levee::backend_options o;
        o.weight = 1 + static_cast<std::uint32_t>(in.below(in.boolean() ? 4 : wmax));
        o.tier = in.below(4) == 0 ? static_cast<std::uint32_t>(in.below(3)) : 0;
        o.max_in_flight = in.below(3) == 0 ? 1 + in.below(3) : 0;
        if (model.count(id)) {
          bool threw = false;
          try {
            bal.add_backend(id, {}, o);
          } catch (const std::invalid_argument&) {
            threw = true;
          }
          LEVEE_FUZZ_CHECK(threw, "duplicate add_backend(%llu) did not throw",
                           static_cast<unsigned long long>(id));
        } else {
          bal.add_backend(id, {}, o);
          model[id] = member{o.weight, o.tier, o.max_in_flight, true, 0, ++incarnations};
        }
        break;
      }
      case 2: {  // remove
        const levee::backend_id id = new_id();
        const bool present = model.erase(id) != 0;
        LEVEE_FUZZ_CHECK(bal.remove_backend(id) == present, "remove_backend(%llu) result",
                         static_cast<unsigned long long>(id));
        break;
      }
      case 3: {  // set_weight / set_max_in_flight / set_healthy
        const levee::backend_id id = new_id();
        const bool present = model.count(id) != 0;
        switch (in.below(3)) {
          case 0: {
            const auto w = 1 + static_cast<std::uint32_t>(in.below(wmax));
            LEVEE_FUZZ_CHECK(bal.set_weight(id, w) == present, "set_weight result");
            if (present) model[id].weight = w;
            break;
          }
          case 1: {
            const std::size_t m = in.below(4);
            LEVEE_FUZZ_CHECK(bal.set_max_in_flight(id, m) == present, "set_max_in_flight result");
            if (present) model[id].max_in_flight = m;
            break;
          }
          default: {
            const bool h = in.below(3) != 0;
            LEVEE_FUZZ_CHECK(bal.set_healthy(id, h) == present, "set_healthy result");
            if (present) model[id].healthy = h;
            break;
          }
        }
        break;
      }
      case 4: {  // a batch, all or nothing
        typename balancer_type::batch b;
        auto next = model;
        bool valid = true;
        for (std::size_t k = 0, n = 1 + in.below(4); k < n; ++k) {
          const levee::backend_id id = new_id();
          const bool present = next.count(id) != 0;
          switch (in.below(4)) {
            case 0: {
              const auto w =
                  static_cast<std::uint32_t>(in.below(std::min<std::uint32_t>(50, wmax)));  // 0 is invalid
              b.add(id, {}, levee::backend_options{w, 0, 0});
              if (present || w == 0) valid = false;
              if (!present) next[id] = member{w, 0, 0, true, 0, ++incarnations};
              break;
            }
            case 1:
              b.remove(id);
              if (!present) valid = false;
              next.erase(id);
              break;
            case 2: {
              const auto w = 1 + static_cast<std::uint32_t>(in.below(std::min<std::uint32_t>(50, wmax)));
              b.set_weight(id, w);
              if (!present)
                valid = false;
              else
                next[id].weight = w;
              break;
            }
            default: {
              const bool h = in.boolean();
              b.set_healthy(id, h);
              if (!present)
                valid = false;
              else
                next[id].healthy = h;
              break;
            }
          }
        }
        bool threw = false;
        try {
          bal.apply(std::move(b));
        } catch (const std::invalid_argument&) {
          threw = true;
        }
        LEVEE_FUZZ_CHECK(threw == !valid, "apply(batch) threw %d for a batch that is %s", threw,
                         valid ? "valid" : "invalid");
        if (valid) model = std::move(next);
        break;
      }
      case 5:
      case 6:
      case 7: {  // pick, keep the lease open
        std::vector<levee::backend_id> ex;
        for (std::size_t k = 0, n = in.below(3); k < n; ++k) ex.push_back(new_id());
        levee::pick_request r;
        if (keyed || in.boolean()) r.key = in.u64();
        r.exclude = ex;
        if (in.boolean()) r.random = &gen;
        std::optional<lease> got = bal.try_pick(r);
        check_pick(got, ex);
        if (got) {
          const levee::backend_id id = got->id();
          ++model[id].leases;
          leases.push_back(open_lease{std::move(*got), id, model[id].incarnation, false});
        }
        break;
      }
      case 8: {  // finish / finish_and_release / destroy a lease
        if (leases.empty()) break;
        const std::size_t i = in.below(leases.size());
        switch (in.below(3)) {
          case 0:
            if (!leases[i].finished) {
              leases[i].l.finish(in.boolean() ? levee::outcome::success : levee::outcome::failure,
                                 std::chrono::nanoseconds(in.u16()));
              leases[i].finished = true;
              lease_gone(leases[i].id, leases[i].incarnation);
            }
            break;
          case 1: {
            const bool was_finished = leases[i].finished;
            leases[i].l.finish_and_release(levee::outcome::success, std::chrono::nanoseconds(in.u16()));
            if (!was_finished) lease_gone(leases[i].id, leases[i].incarnation);
            leases.erase(leases.begin() + static_cast<std::ptrdiff_t>(i));
            break;
          }
          default:
            drop_lease(i);
            break;
        }
        break;
      }
      case 9: {  // a worker's loop: record, then try_pick_keeping
        levee::pick_request r;
        if (keyed) r.key = in.u64();
        if (kept) kept->record(levee::outcome::success, std::chrono::nanoseconds(100));
        // kept's slot is given up by the call (or reused for the same backend): eligibility is
        // judged without it.
        if (kept) lease_gone(kept_id, kept_incarnation);
        std::optional<lease> got = bal.try_pick_keeping(r, kept);
        LEVEE_FUZZ_CHECK(!kept, "try_pick_keeping left `kept` non-empty");
        check_pick(got, {});
        if (got) {
          kept_id = got->id();
          kept_incarnation = model[kept_id].incarnation;
          ++model[kept_id].leases;
          kept = std::move(got);
        }
        break;
      }
      case 10: {  // a hashing strategy maps a key to the same backend while nothing changes
        // Only while every backend is eligible: when probing meets ineligible
        // backends, maglev and jump_hash fall back to a weighted random scan.
        if (!keyed) break;
        bool all_eligible = true;
        for (const auto& [id, m] : model) all_eligible = all_eligible && eligible(id, {});
        if (!all_eligible) break;
        levee::pick_request r;
        r.key = in.u64();
        std::optional<levee::backend_id> first;
        {
          auto a = bal.try_pick(r);
          check_pick(a, {});
          if (a) first = a->id();
        }
        auto b = bal.try_pick(r);
        check_pick(b, {});
        LEVEE_FUZZ_CHECK(first.has_value() == b.has_value() && (!b || b->id() == *first),
                         "the same key picked two backends with no change in between");
        break;
      }
      case 11:
        clk.advance(std::chrono::nanoseconds(in.u32()));
        break;
      default:
        break;
    }
    check_in_flight();
  }

  // Every lease ends: in-flight counts return to zero.
  leases.clear();
  kept.reset();
  for (auto& [id, m] : model) m.leases = 0;
  check_in_flight();

  // Shares: every backend healthy, uncapped, one tier; leases released at once.
  if (shares == share_kind::none || model.empty()) return;
  for (auto& [id, m] : model) {
    (void)bal.set_healthy(id, true);
    (void)bal.set_max_in_flight(id, 0);
  }
  bool one_tier = true;
  for (const auto& [id, m] : model) one_tier = one_tier && m.tier == model.begin()->second.tier;
  if (!one_tier) return;
  std::uint64_t total_w = 0;
  std::uint64_t g = 0;
  for (const auto& [id, m] : model) {
    total_w += m.weight;
    g = std::gcd(g, std::uint64_t{m.weight});
  }
  const bool weighted = shares == share_kind::exact_weighted || shares == share_kind::random_weighted;
  const std::uint64_t period = weighted ? total_w / g : model.size();
  const std::uint64_t rounds = std::max<std::uint64_t>(1, 4'000 / period);
  if (period * rounds > 40'000) return;
  const std::uint64_t picks = period * rounds;
  std::map<levee::backend_id, std::uint64_t> count;
  for (std::uint64_t k = 0; k < picks; ++k) {
    auto l = bal.try_pick({});
    LEVEE_FUZZ_CHECK(l.has_value(), "no pick with every backend eligible");
    ++count[l->id()];
  }
  for (const auto& [id, m] : model) {
    const double share = weighted ? static_cast<double>(m.weight) / static_cast<double>(total_w)
                                  : 1.0 / static_cast<double>(model.size());
    const double expect = share * static_cast<double>(picks);
    const double got = static_cast<double>(count[id]);
    if (shares == share_kind::exact_equal || shares == share_kind::exact_weighted) {
      LEVEE_FUZZ_CHECK(count[id] == (weighted ? rounds * (m.weight / g) : rounds),
                       "backend %llu (weight %u of %llu) got %llu of %llu picks, expected exactly %.0f",
                       static_cast<unsigned long long>(id), m.weight,
                       static_cast<unsigned long long>(total_w), static_cast<unsigned long long>(count[id]),
                       static_cast<unsigned long long>(picks), expect);
    } else {
      const double sd = std::sqrt(static_cast<double>(picks) * share * (1 - share));
      LEVEE_FUZZ_CHECK(std::fabs(got - expect) <= 6 * sd + 2,
                       "backend %llu (weight %u of %llu) got %.0f of %llu picks, expected %.1f +- %.1f",
                       static_cast<unsigned long long>(id), m.weight,
                       static_cast<unsigned long long>(total_w), got, static_cast<unsigned long long>(picks),
                       expect, 6 * sd + 2);
    }
  }
  // Round robin with one backend excluded: its turn is consumed, so every
  // other backend still gets exactly one pick per cycle (+-1 at the ends).
  if (shares == share_kind::exact_equal && model.size() >= 2) {
    const levee::backend_id skipped = model.begin()->first;
    const std::vector<levee::backend_id> ex{skipped};
    levee::pick_request r;
    r.exclude = ex;
    std::map<levee::backend_id, std::uint64_t> n;
    for (std::uint64_t k = 0; k < rounds * (model.size() - 1); ++k) {
      auto l = bal.try_pick(r);
      LEVEE_FUZZ_CHECK(l.has_value() && l->id() != skipped, "round robin picked an excluded backend or none");
      ++n[l->id()];
    }
    for (const auto& [id, m] : model) {
      if (id == skipped) continue;
      LEVEE_FUZZ_CHECK(
          n[id] + 1 >= rounds && n[id] <= rounds + 1,
          "round robin with one backend excluded gave backend %llu %llu picks, expected %llu +- 1",
          static_cast<unsigned long long>(id), static_cast<unsigned long long>(n[id]),
          static_cast<unsigned long long>(rounds));
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  levee_fuzz::input in(data, size);
  const std::uint64_t seed = in.u64();
  switch (in.below(12)) {
    case 0:
      run(in, levee::round_robin(seed), share_kind::exact_equal, false);
      break;
    case 1:
      run(in, levee::weighted_round_robin(seed), share_kind::exact_weighted, false);
      break;
    case 2:
      run(in, levee::random(), share_kind::random_equal, false);
      break;
    case 3:
      run(in, levee::weighted_random(), share_kind::random_weighted, false);
      break;
    case 4:
      run(in, levee::least_loaded(), share_kind::none, false);
      break;
    case 5:
      run(in, levee::power_of_two(), share_kind::none, false);
      break;
    case 6:
      run(in, levee::peak_ewma(), share_kind::none, false);
      break;
    case 7:
      run(in, levee::ring_hash(), share_kind::none, true);
      break;
    case 8:
      run(in, levee::maglev(), share_kind::none, true);
      break;
    case 9:
      run(in, levee::rendezvous(), share_kind::none, true);
      break;
    case 10:
      run(in, levee::jump_hash(), share_kind::none, true);
      break;
    default:
      run(in, levee::bounded_load<levee::ring_hash>(), share_kind::none, false);
      break;
  }
  return 0;
}

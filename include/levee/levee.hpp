// levee/levee.hpp - everything levee offers, in one include.
//
//   queue         levee/mpmc_queue.hpp           bounded lock-free MPMC queue
//   time          levee/clock.hpp                clock concept, manual_clock, sleeper
//   rate control  levee/rate_limiter.hpp         GCRA rate limiter, levee::rate
//                 levee/concurrency_limiter.hpp  fixed concurrency limit, RAII permits
//                 levee/adaptive_limit.hpp       adaptive limit (AIMD, gradient)
//                 levee/conformance.hpp          rate-envelope conformance checker
//   balancing     levee/balance.hpp              strategies, decorators, balancer
//   composition   levee/leveler.hpp              the rate-limited consumer scheduler
//                 levee/metrics.hpp              metrics snapshot, Prometheus text
#pragma once

#include "adaptive_limit.hpp"
#include "balance.hpp"
#include "clock.hpp"
#include "concurrency_limiter.hpp"
#include "conformance.hpp"
#include "leveler.hpp"
#include "metrics.hpp"
#include "mpmc_queue.hpp"
#include "rate_limiter.hpp"

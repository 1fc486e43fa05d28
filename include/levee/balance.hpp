// levee/balance.hpp - the balancing block: every strategy, decorator and the balancer.
#pragma once

#include "balance/backend_set.hpp"
#include "balance/strategy.hpp"
#include "balance/round_robin.hpp"
#include "balance/weighted_round_robin.hpp"
#include "balance/random.hpp"
#include "balance/least_loaded.hpp"
#include "balance/power_of_two.hpp"
#include "balance/peak_ewma.hpp"
#include "balance/health.hpp"
#include "balance/failover.hpp"
#include "balance/slow_start.hpp"
#include "balance/snapshot_cell.hpp"
#include "balance/balancer.hpp"

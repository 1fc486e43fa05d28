// quickstart: the smallest useful levee program (the README's first example):
// 100 e-mails to a provider that accepts 50 calls per second, 4 at a time.
#include <cstdio>
#include <levee/leveler.hpp>
#include <string>

int main() {
  levee::leveler<std::string>::options opts;
  opts.rate = levee::rate::per_second(50);  // what the provider allows
  opts.max_concurrency = 4;                 // calls in flight at once
  opts.workers = 2;                         // threads that make the calls

  levee::leveler<std::string> mailer(opts, [](std::string& address) {
    std::printf("sending to %s\n", address.c_str());  // call the provider here; throw = failure
  });

  for (int i = 0; i < 100; ++i)  // returns at once: the queue (1024 jobs by default) absorbs the burst
    if (auto r = mailer.submit("user" + std::to_string(i) + "@example.com"); !r)
      std::printf("not queued (%s): %s\n", std::string(levee::to_string(r.status)).c_str(), r.job->c_str());

  mailer.drain();  // blocks until every accepted job is done: about 2 s at 50/s
  const levee::metrics_snapshot m = mailer.metrics();
  std::printf("sent %llu, dead-lettered %llu\n", static_cast<unsigned long long>(m.succeeded),
              static_cast<unsigned long long>(m.dead_lettered.total()));
  return m.succeeded == 100 ? 0 : 1;
}

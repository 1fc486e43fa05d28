// quickstart: the smallest useful levee program (the README's first example).
// 100 e-mails go to a provider that accepts 50 calls per second, 4 at a time.
#include <levee/leveler.hpp>

#include <cstdio>
#include <string>

int main() {
  levee::leveler<std::string>::options opts;
  opts.rate = levee::rate::per_second(50);  // what the provider allows
  opts.max_concurrency = 4;                 // calls in flight at once
  opts.workers = 2;                         // threads that make the calls

  levee::leveler<std::string> mailer(opts, [](std::string& address) {
    std::printf("sending to %s\n", address.c_str());  // call the provider here
  });

  for (int i = 0; i < 100; ++i)  // returns at once: the queue absorbs the burst
    (void)mailer.submit("user" + std::to_string(i) + "@example.com");

  mailer.drain();  // blocks until every accepted job is done (~2 s at 50/s)
  const auto m = mailer.metrics();
  std::printf("sent %llu, failed %llu\n", static_cast<unsigned long long>(m.succeeded),
              static_cast<unsigned long long>(m.dead_lettered.total()));
  return m.succeeded == 100 ? 0 : 1;
}

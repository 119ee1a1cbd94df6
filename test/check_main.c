/* Runs every suite; `make check` runs this. CK_FORK and CK_RUN_SUITE work as
 * Check documents them (CK_RUN_SUITE=queue runs one suite). */
#include <stdlib.h>

#include "helpers.h"

int main(void) {
  Suite* (*const suites[])(void) = {
    errors_suite,
    queue_suite,
    queue_sink_suite,
    watermark_suite,
    stress_suite,
    faults_suite,
    badinput_suite,
    sinks_suite,
    channel_suite,
    channel_race_suite,
    queue_race_suite,
    samples_suite,
    /* one line per suite; keep this list in step with helpers.h */
  };
  SRunner* sr = srunner_create(NULL);
  size_t i;
  int failed;

  for (i = 0; i < sizeof(suites) / sizeof(suites[0]); i++)
    srunner_add_suite(sr, suites[i]());
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

/* Runs every suite; `make check` runs this. CK_FORK and CK_RUN_SUITE work as
 * Check documents them (CK_RUN_SUITE=queue runs one suite). */
#include <stdlib.h>

#include "helpers.h"

int main(void) {
  SRunner* sr = srunner_create(errors_suite());
  int failed;

  srunner_add_suite(sr, queue_suite());
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

"""Print pytest's JUnit XML as one closing line: `pytest: N passed, N failed, N skipped`."""
import sys
import xml.etree.ElementTree as ET

root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == 'testsuite' else list(root.iter('testsuite'))
total = sum(int(s.get('tests', 0)) for s in suites)
failed = sum(int(s.get('failures', 0)) + int(s.get('errors', 0)) for s in suites)
skipped = sum(int(s.get('skipped', 0)) for s in suites)
print(f'pytest: {total - failed - skipped} passed, {failed} failed, {skipped} skipped')

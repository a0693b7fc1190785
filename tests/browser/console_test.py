"""The web console driven as a person would, in headless Debian chromium.

Run by tests/browser/run.sh, which starts the real apitoken-server and sets
APITOKEN_WEB (the console's URL), APITOKEN_OWNER and APITOKEN_VIEWER (tokens
of team-a) and APITOKEN_OTHER (an owner token of team-b). The steps share
one database and run in order; each prints its outcome, and the last line
is "browser: N passed, N failed". Screenshots go to $APITOKEN_SCREENSHOTS
(default: screenshots/scratch/, ignored by git).
"""

import datetime
import os
import sys
import traceback

from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

WEB = os.environ["APITOKEN_WEB"]
OWNER = os.environ["APITOKEN_OWNER"]
VIEWER = os.environ["APITOKEN_VIEWER"]
OTHER = os.environ["APITOKEN_OTHER"]
HERE = os.path.dirname(os.path.abspath(__file__))
# The README's screenshots are rewritten only when asked
# (APITOKEN_SCREENSHOTS=tests/browser/screenshots); otherwise, and in CI,
# they go to a scratch directory, so a run leaves the tree clean.
SHOTS = os.environ.get("APITOKEN_SCREENSHOTS") or os.path.join(HERE, "screenshots", "scratch")
TOKEN_ID = "ci-deploy"


def browser(javascript=True):
    """A fresh headless chromium (its own profile: no shared cookies)."""
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--disable-gpu", "--window-size=1280,860", "--lang=en-US"):
        options.add_argument(flag)
    if not javascript:
        options.add_experimental_option(
            "prefs", {"profile.managed_default_content_settings.javascript": 2})
    service = Service(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.implicitly_wait(2)
    return driver


def shot(driver, name, full_page=False):
    """Saves SHOTS/NAME.png (the page's whole height if asked)."""
    os.makedirs(SHOTS, exist_ok=True)
    if full_page:
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(1280, max(600, min(int(height) + 40, 2400)))
    driver.save_screenshot(os.path.join(SHOTS, name + ".png"))
    if full_page:
        driver.set_window_size(1280, 860)


def go(driver, element, keys=None):
    """Clicks `element` (or types `keys` into it) and waits for the next page."""
    old = driver.find_element(By.TAG_NAME, "html")
    if keys is None:
        element.click()
    else:
        element.send_keys(keys)

    def replaced(_):
        # Chromium reports a replaced page as "stale" or as a node that
        # "does not belong to the document": either means the next page.
        try:
            old.is_enabled()
            return False
        except WebDriverException:
            return True

    WebDriverWait(driver, 10).until(replaced)


def sign_in(driver, token):
    driver.get(WEB + "/sign-in")
    field = driver.find_element(By.ID, "token")
    field.send_keys(token)
    go(driver, field, Keys.ENTER)  # the keyboard submits the form
    assert driver.current_url.endswith("/tokens"), driver.current_url


def sign_out(driver):
    go(driver, driver.find_element(By.ID, "sign-out"))
    assert "/sign-in" in driver.current_url, driver.current_url


def text(driver):
    return driver.find_element(By.TAG_NAME, "body").text


def row(driver, token_id):
    return driver.find_element(By.CSS_SELECTOR, f'tr[data-token="{token_id}"]')


def secret_value(driver):
    return driver.find_element(By.ID, "secret").get_attribute("value")


class Suite:
    """Steps in order over one owner session (`self.owner`)."""

    def __init__(self):
        self.owner = browser()
        self.secret = None
        self.others = []

    def close(self):
        for driver in [self.owner] + self.others:
            driver.quit()

    def new_browser(self, javascript=True):
        driver = browser(javascript)
        self.others.append(driver)
        return driver

    # -- the owner's flow ------------------------------------------------

    def test_sign_in_keeps_the_token_on_the_server(self):
        d = self.owner
        sign_in(d, OWNER)
        assert "Namespace team-a" in text(d)
        cookie = d.get_cookie("apitoken_session")
        assert cookie and cookie["httpOnly"] and cookie["sameSite"] == "Strict", cookie
        assert OWNER not in d.current_url and OWNER not in d.page_source
        assert "apitoken_session" not in d.execute_script("return document.cookie")
        storage = d.execute_script(
            "return JSON.stringify(localStorage) + JSON.stringify(sessionStorage)")
        assert storage == "{}{}", storage

    def test_create_shows_the_secret_once(self):
        d = self.owner
        go(d, d.find_element(By.ID, "create-token"))
        d.find_element(By.ID, "api_token_id").send_keys(TOKEN_ID)
        d.find_element(By.ID, "display_name").send_keys("CI deploy")
        d.find_element(By.ID, "description").send_keys("GitHub Actions, production")
        Select(d.find_element(By.ID, "role")).select_by_value("editor")
        d.find_element(By.ID, "expiry-custom").click()
        soon = datetime.datetime.now(datetime.timezone.utc).date() + datetime.timedelta(days=10)
        # A date input takes the keys of the browser's locale (en-US: MM/DD/YYYY).
        d.find_element(By.ID, "expire_date").send_keys(soon.strftime("%m%d%Y"))
        d.find_element(By.ID, "labels").send_keys("env=prod")
        # Every field has a label.
        for field in d.find_elements(By.CSS_SELECTOR, "#create-form input:not([type=hidden]), "
                                                      "#create-form select, #create-form textarea"):
            field_id = field.get_attribute("id")
            assert d.find_elements(By.CSS_SELECTOR, f'label[for="{field_id}"]'), field_id
        shot(d, "create", full_page=True)
        go(d, d.find_element(By.ID, "create"))
        assert "/secret" in d.current_url, d.current_url
        self.secret = secret_value(d)
        assert self.secret.startswith("apitoken_"), self.secret
        assert "It is shown only once" in text(d)
        copy = d.find_element(By.ID, "copy")
        assert copy.is_displayed(), "the script shows the copy button"
        copy.click()
        status = d.find_element(By.ID, "copied").text
        assert status in ("Copied to the clipboard.", "Select the secret and copy it by hand."), status
        shot(d, "secret")
        d.refresh()
        assert "was shown once and is gone" in text(d)
        assert self.secret not in d.page_source
        assert not d.find_elements(By.ID, "secret")

    def test_the_table_shows_the_new_token_with_its_badge(self):
        d = self.owner
        d.get(WEB + "/tokens")
        tr = row(d, TOKEN_ID)
        cells = [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
        assert "CI deploy" in cells[0] and cells[1] == "Editor", cells
        assert "by namespaces/team-a/apitokens/bootstrap-owner" in cells[2], cells
        warn = tr.find_element(By.CSS_SELECTOR, "td:nth-child(4) .badge.warn")
        assert warn.text.startswith("Expires in "), warn.text
        assert tr.find_element(By.CSS_SELECTOR, ".status").text == "Active"
        # The filter "expiring within 14 days" keeps it and drops the others.
        d.find_element(By.ID, "f-expiring").click()
        go(d, d.find_element(By.ID, "apply-filters"))
        ids = [r.get_attribute("data-token") for r in d.find_elements(By.CSS_SELECTOR, "tr[data-token]")]
        assert ids == [TOKEN_ID], ids
        Select(d.find_element(By.ID, "f-role")).select_by_value("owner")
        go(d, d.find_element(By.ID, "apply-filters"))
        assert "No tokens match." in text(d)
        d.get(WEB + "/tokens")
        shot(d, "tokens")
        assert self.secret not in d.page_source

    def test_regenerate_with_grace(self):
        d = self.owner
        go(d, row(d, TOKEN_ID).find_element(By.TAG_NAME, "a"))
        assert "Active" in d.find_element(By.TAG_NAME, "h1").text
        Select(d.find_element(By.ID, "grace")).select_by_value("86400")
        go(d, d.find_element(By.ID, "regenerate"))
        assert "Token regenerated" in text(d)
        new = secret_value(d)
        assert new.startswith("apitoken_") and new != self.secret
        go(d, d.find_element(By.LINK_TEXT, "Token details"))
        assert "Previous secret works until" in text(d)
        assert new not in d.page_source and self.secret not in d.page_source
        self.secret = new

    def test_revoke_after_confirming(self):
        d = self.owner
        go(d, d.find_element(By.ID, "revoke"))
        assert "cannot be undone" in text(d)
        go(d, d.find_element(By.LINK_TEXT, "Cancel"))
        assert "Active" in d.find_element(By.TAG_NAME, "h1").text
        go(d, d.find_element(By.ID, "revoke"))
        go(d, d.find_element(By.ID, "confirm-revoke"))
        assert "The token is revoked." in text(d)
        assert "Revoked" in d.find_element(By.TAG_NAME, "h1").text
        d.get(WEB + "/tokens?state=revoked")
        assert row(d, TOKEN_ID).find_element(By.CSS_SELECTOR, ".status").text == "Revoked"

    def test_the_audit_log_has_both(self):
        d = self.owner
        go(d, d.find_element(By.LINK_TEXT, "Audit log"))
        d.find_element(By.ID, "a-token").send_keys(TOKEN_ID)
        go(d, d.find_element(By.ID, "apply-filters"))
        actions = [td.text for td in d.find_elements(By.CSS_SELECTOR, "#audit td.action")]
        # (The lifecycle sweeper may add an EXPIRY_WARNING: it expires in 10 days.)
        actions = [action for action in actions if action != "EXPIRY_WARNING"]
        assert actions == ["REVOKE", "REGENERATE", "CREATE"], actions
        assert "HeadlessChrome" in text(d), "the browser's user agent is audited"
        Select(d.find_element(By.ID, "a-action")).select_by_value("REGENERATE")
        go(d, d.find_element(By.ID, "apply-filters"))
        actions = [td.text for td in d.find_elements(By.CSS_SELECTOR, "#audit td.action")]
        assert actions == ["REGENERATE"], actions
        shot(d, "audit")

    def test_a_form_without_its_csrf_token_is_refused(self):
        d = self.owner
        d.get(WEB + "/tokens/new")
        d.execute_script('document.querySelector("#create-form input[name=csrf]").remove()')
        d.find_element(By.ID, "api_token_id").send_keys("forged")
        go(d, d.find_element(By.ID, "create"))
        assert "This form was refused" in text(d)
        d.get(WEB + "/tokens")
        assert not d.find_elements(By.CSS_SELECTOR, 'tr[data-token="forged"]')

    def test_who_am_i(self):
        d = self.owner
        go(d, d.find_element(By.LINK_TEXT, "Who am I"))
        body = text(d)
        assert "namespaces/team-a/apitokens/bootstrap-owner" in body and "Owner" in body, body

    def test_sign_out(self):
        d = self.owner
        sign_out(d)
        assert "You are signed out." in text(d)
        d.get(WEB + "/tokens")
        assert "/sign-in" in d.current_url

    # -- other people ---------------------------------------------------

    def test_a_viewer_cannot_create(self):
        d = self.new_browser()
        sign_in(d, VIEWER)
        assert not d.find_elements(By.ID, "create-token")
        assert not d.find_elements(By.LINK_TEXT, "Audit log")
        d.get(WEB + "/tokens/new")
        assert "may only read" in text(d)
        d.get(WEB + "/tokens/bootstrap-owner")
        assert not d.find_elements(By.ID, "regenerate")
        # A forced POST, with the session's own CSRF token, is refused.
        d.execute_script("""
            const csrf = document.querySelector("input[name=csrf]").value;
            const form = document.createElement("form");
            form.method = "post"; form.action = "/tokens";
            for (const [k, v] of [["csrf", csrf], ["api_token_id", "by-viewer"],
                                   ["role", "viewer"], ["expiry", "30"]]) {
              const input = document.createElement("input");
              input.type = "hidden"; input.name = k; input.value = v; form.appendChild(input);
            }
            document.body.appendChild(form); form.submit();""")
        # The service refuses it (the console has no role rule of its own).
        WebDriverWait(d, 10).until(lambda driver: "/tokens/new" not in driver.current_url
                                   and "needs role owner" in text(driver))
        d.get(WEB + "/tokens")
        assert not d.find_elements(By.CSS_SELECTOR, 'tr[data-token="by-viewer"]')

    def test_another_namespace_sees_nothing(self):
        d = self.new_browser()
        sign_in(d, OTHER)
        assert "Namespace team-b" in text(d)
        ids = [r.get_attribute("data-token") for r in d.find_elements(By.CSS_SELECTOR, "tr[data-token]")]
        assert ids == ["bootstrap-owner"], ids
        d.get(WEB + "/tokens/" + TOKEN_ID)
        assert "There is no such token" in text(d) or "not found" in text(d).lower(), text(d)
        d.get(WEB + "/audit")
        assert "team-a" not in text(d)

    def test_everything_works_without_javascript(self):
        d = self.new_browser(javascript=False)
        sign_in(d, OWNER)
        d.get(WEB + "/tokens/new")
        d.find_element(By.ID, "api_token_id").send_keys("no-script")
        d.find_element(By.ID, "expiry-never").click()
        go(d, d.find_element(By.ID, "create"))
        assert secret_value(d).startswith("apitoken_")
        assert not d.find_element(By.ID, "copy").is_displayed(), "no copy button without script"
        d.get(WEB + "/tokens/no-script/revoke")
        go(d, d.find_element(By.ID, "confirm-revoke"))
        assert "The token is revoked." in text(d)

    def test_bad_input_is_explained(self):
        d = self.new_browser()
        sign_in(d, OWNER)
        d.get(WEB + "/tokens/new")
        field = d.find_element(By.ID, "api_token_id")
        d.execute_script("arguments[0].removeAttribute('pattern')", field)
        field.send_keys("Bad_Id")
        go(d, d.find_element(By.ID, "create"))
        problem = d.find_element(By.ID, "problem").text
        assert "api_token_id" in problem, problem
        assert d.find_element(By.ID, "api_token_id").get_attribute("value") == "Bad_Id"
        # The keyboard reaches the skip link first, and it leads to the content.
        d.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
        focused = d.switch_to.active_element
        assert focused.text == "Skip to content", focused.text


def main():
    suite = Suite()
    passed = failed = 0
    steps = [name for name in Suite.__dict__ if name.startswith("test_")]
    try:
        for name in steps:
            try:
                getattr(suite, name)()
            except (AssertionError, NoSuchElementException, Exception):  # noqa: BLE001
                failed += 1
                print(f"FAIL {name}")
                traceback.print_exc()
                try:
                    shot(suite.owner, "failure-" + name)
                except Exception:  # noqa: BLE001
                    pass
            else:
                passed += 1
                print(f"ok   {name}")
    finally:
        suite.close()
    print(f"browser: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

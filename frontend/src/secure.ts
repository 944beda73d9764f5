/** Without a secure context (https, or http://localhost) the browser gives the app no
 * service worker and no Web Locks: it does not open offline and does not send in the
 * background, which the app then says. */
export const INSECURE_NOTICE =
  "This address is not secure, so the app will not work offline here: studies are sent only while this page is open and online. Open it at its https:// address, or at http://localhost on this computer.";
